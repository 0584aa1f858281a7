"""Counting host syncs: the device-to-host reads and data-dependent shapes of a piece of code.

On a GPU every one of these stalls the host until the device has caught up,
so a training step that has many of them cannot keep the GPU busy:

- reads: ``.item()``, ``bool()`` / ``int()`` / ``float()`` of a tensor, ``.tolist()``,
  ``.numpy()``, ``.cpu()`` (and ``.to("cpu")`` of a device tensor), ``torch.equal``,
  ``torch.allclose``;
- data-dependent shapes: ``nonzero`` / ``argwhere`` / one-argument ``torch.where``,
  boolean-mask indexing (read or write), ``masked_select``, ``bincount``, ``unique``
  (and ``unique_consecutive``), ``repeat_interleave`` with tensor repeats and no
  ``output_size``.

:class:`SyncCounter` is a ``TorchFunctionMode``: it sees every torch call made from
Python, on any device, so the same count comes out of a CPU run as out of a GPU
run that takes the same branches (:func:`gpu_paths` makes a CPU run take them).
``torch.nonzero_static`` (a fixed size) and ordinary ops are not counted.
"""

from __future__ import annotations

import contextlib
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

T = TypeVar("T")

_READS = {
    Tensor.item: "item",
    Tensor.__bool__: "bool",
    Tensor.__int__: "int",
    Tensor.__float__: "float",
    Tensor.__index__: "index",
    Tensor.tolist: "tolist",
    Tensor.numpy: "numpy",
    Tensor.cpu: "cpu",
    torch.equal: "equal",
    Tensor.equal: "equal",
    torch.allclose: "allclose",
    Tensor.allclose: "allclose",
    torch.is_nonzero: "is_nonzero",
}
_SHAPES = {
    torch.nonzero: "nonzero",
    Tensor.nonzero: "nonzero",
    torch.argwhere: "nonzero",
    Tensor.argwhere: "nonzero",
    torch.masked_select: "masked_select",
    Tensor.masked_select: "masked_select",
    torch.bincount: "bincount",
    Tensor.bincount: "bincount",
    torch.unique: "unique",
    Tensor.unique: "unique",
    torch.unique_consecutive: "unique",
    Tensor.unique_consecutive: "unique",
    torch.functional.unique: "unique",
    torch.functional.unique_consecutive: "unique",
}
_REPEAT = {torch.repeat_interleave, Tensor.repeat_interleave}
_INDEX = {Tensor.__getitem__: "bool_index", Tensor.__setitem__: "bool_index_put",
          Tensor.index_put: "bool_index_put", Tensor.index_put_: "bool_index_put", torch.index_put: "bool_index_put"}
_WHERE = {torch.where, Tensor.where}


def _has_bool_index(index) -> bool:
    items = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in items)


def _kind(func, args, kwargs) -> str | None:
    """The sync a torch call makes, or None."""
    name = _READS.get(func) or _SHAPES.get(func)
    if name:
        return name
    if func in _INDEX:
        index = args[1] if len(args) > 1 else kwargs.get("indices")
        return _INDEX[func] if _has_bool_index(index) else None
    if func in _REPEAT:
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        if len(args) == 1 and func is torch.repeat_interleave and isinstance(args[0], Tensor) and "repeats" not in kwargs:
            repeats = args[0]  # torch.repeat_interleave(repeats)
        if isinstance(repeats, Tensor) and repeats.numel() > 1 and kwargs.get("output_size") is None:
            return "repeat_interleave"
        return None
    if func in _WHERE:
        return "nonzero" if len(args) + len(kwargs) == 1 else None
    if func is Tensor.to:
        target = next((a for a in args[1:] if isinstance(a, (str, torch.device))), kwargs.get("device"))
        src = args[0]
        if target is not None and isinstance(src, Tensor) and torch.device(target).type == "cpu" and src.device.type != "cpu":
            return "cpu"
    return None


class SyncCounter(TorchFunctionMode):
    """Counts host syncs by kind while active: ``with SyncCounter() as c: ...; c.total``.

    ``where=True`` also keeps the innermost project frame of each sync (``c.sites``),
    which says which line to fix."""

    def __init__(self, where: bool = False, twins: tuple[str, ...] = ()) -> None:
        """``twins``: source files (ending, e.g. ``"rendering/rasterizer.py"``) of pure-torch twins that a
        GPU replaces by an accelerator: their syncs go to :attr:`twin_counts`, not :attr:`counts`."""
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.twin_counts: Counter[str] = Counter()
        self.sites: Counter[str] = Counter()
        self.where = where
        self.twins = twins

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def reset(self) -> None:
        self.counts.clear()
        self.twin_counts.clear()
        self.sites.clear()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = _kind(func, args, kwargs)
        if kind is not None:
            site = _site() if self.where or self.twins else ""
            if self.twins and site.split(":")[0].endswith(self.twins):
                self.twin_counts[kind] += 1
            else:
                self.counts[kind] += 1
            if self.where:
                self.sites[f"{kind} at {site}"] += 1
        return func(*args, **kwargs)


def _site() -> str:
    frames = [f for f in traceback.extract_stack() if "mpod123" in f.filename and f.filename != __file__]
    if not frames:
        return "?"
    f = frames[-1]
    return f"{f.filename.rsplit('mpod123', 1)[-1].lstrip('/')}:{f.lineno}"


def to_device(x: Tensor, device: torch.device | str) -> Tensor:
    """A host tensor on ``device`` without waiting: on CUDA copied non-blocking from pinned memory
    (a plain ``.to`` from pageable memory makes the host wait for the stream), else ``.to``."""
    device = torch.device(device)
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


_forced = threading.local()


def takes_gpu_paths(device: torch.device | str) -> bool:
    """Whether code on ``device`` takes the sync-free branches written for a GPU: on any
    accelerator, and on the CPU inside :func:`gpu_paths` (to count or test those branches)."""
    return torch.device(device).type != "cpu" or getattr(_forced, "on", False)


@contextlib.contextmanager
def gpu_paths() -> Iterator[None]:
    """Make CPU code take the GPU's (sync-free) branches, so tests and the sync benchmark run them."""
    before = getattr(_forced, "on", False)
    _forced.on = True
    try:
        yield
    finally:
        _forced.on = before


class Compactor:
    """The indices of a mask's True entries at a fixed size, so a GPU step need not read their
    number back: ``torch.nonzero_static`` at a capacity learned from earlier calls.

    Each call site names a ``key``; its first call reads the count once (one sync) and sets the
    capacity to that count plus ``headroom``. Later calls keep, on the device, the largest count
    seen and whether it exceeded the capacity. :meth:`refresh` reads all of that in one sync (a
    stage does it once a step) and grows a capacity that was too small; the step that overflowed
    is reported through :meth:`overflow` so the stage can skip its update (found_inf), since its
    samples were cut short. Entries past the count are padding: they repeat the last index of
    the mask and come with ``valid`` False."""

    def __init__(self, headroom: float = 1.25, granule: int = 1024) -> None:
        self.headroom = headroom
        self.granule = granule
        self.capacity: dict[object, int] = {}
        self._needed: dict[object, Tensor] = {}
        self._overflow: Tensor | None = None
        self.grown = 0
        """Times a capacity had to grow after an overflow (each cost one skipped step)."""

    def _round(self, n: float) -> int:
        return max(self.granule, -(-int(n * self.headroom) // self.granule) * self.granule)

    def nonzero(self, mask: Tensor, key: object) -> tuple[Tensor, Tensor]:
        """(indices (C,) into ``mask.reshape(-1)``, valid (C,) bool); C is the key's capacity."""
        flat = mask.reshape(-1)
        count = flat.sum()
        cap = self.capacity.get(key)
        if cap is None:
            cap = self.capacity[key] = self._round(int(count))  # the key's first call: learn its size
        idx = torch.nonzero_static(flat, size=cap, fill_value=max(0, flat.numel() - 1))[:, 0]
        valid = torch.arange(cap, device=flat.device) < count
        prev = self._needed.get(key)
        self._needed[key] = count if prev is None else torch.maximum(prev, count)
        over = count > cap
        self._overflow = over if self._overflow is None else self._overflow | over
        return idx, valid

    def overflow(self) -> Tensor | None:
        """A device bool: whether any call since the last :meth:`refresh` lost entries (None: no calls)."""
        return self._overflow

    def refresh(self) -> bool:
        """Read the counts needed since the last refresh (one host sync for every key) and grow
        any capacity that was too small; returns whether one was."""
        return refresh_all([self])

    def exact(self, fn: Callable[[], T]) -> T:
        """``fn()``, run again with grown capacities until no gather in it overflowed: for renders
        outside a training step (masks, previews, evaluation), which no step-end check covers."""
        self.refresh()
        while True:
            out = fn()
            if not self.refresh():
                return out


def refresh_all(compactors: list[Compactor]) -> bool:
    """:meth:`Compactor.refresh` for several compactors with one host sync; whether any overflowed."""
    pending = [(c, k, v.reshape(())) for c in compactors for k, v in c._needed.items()]
    if not pending:
        return False
    needed = torch.stack([v for _, _, v in pending]).tolist()
    grew = set()
    for (c, key, _), n in zip(pending, needed):
        if n > c.capacity[key]:
            c.capacity[key] = c._round(n)
            grew.add(id(c))
    for c in compactors:
        c._needed.clear()
        c._overflow = None
        c.grown += id(c) in grew
    return bool(grew)

__all__ = ["Compactor", "SyncCounter", "gpu_paths", "refresh_all", "takes_gpu_paths", "to_device"]
