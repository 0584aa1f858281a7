"""The one place that probes the optional accelerators.

Each accelerated op has a pure-torch twin with the same signature. Components
call :func:`resolve_backend` with what the user asked for:

* ``"torch"`` always works;
* a named accelerator (``"tcnn"``, ``"nerfacc"``) that cannot run raises
  :class:`BackendUnavailable`, whose message says how to install it;
* ``"auto"`` uses the accelerator when it can run and otherwise falls back to
  torch with a single warning per accelerator and process.

Probing imports the package only when asked, so ``import mpod123`` never loads
tinycudann or nerfacc.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from types import ModuleType

import torch


class BackendUnavailable(RuntimeError):
    """A named accelerator was requested but cannot run here."""


class AcceleratorFallbackWarning(UserWarning):
    """``backend="auto"`` fell back to the pure-torch reference."""


@dataclass(frozen=True)
class Accelerator:
    name: str
    module: str
    install_hint: str
    needs_cuda: bool = True


ACCELERATORS: dict[str, Accelerator] = {
    "tcnn": Accelerator(
        "tcnn",
        "tinycudann",
        "pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch "
        "(needs CUDA and a matching compiler)",
    ),
    "nerfacc": Accelerator("nerfacc", "nerfacc", "pip install nerfacc (its ops need CUDA)"),
    "kaolin": Accelerator(
        "kaolin", "kaolin", "pip install kaolin -f <the NVIDIA wheel index for your torch and CUDA versions>"
    ),
    "nvdiffrast": Accelerator(
        "nvdiffrast", "nvdiffrast.torch", "pip install git+https://github.com/NVlabs/nvdiffrast (needs CUDA)"
    ),
}

_probed: dict[str, ModuleType | Exception] = {}
_warned: set[str] = set()


def probe(name: str) -> ModuleType | None:
    """Import an accelerator's module once; ``None`` when it is not importable."""
    acc = ACCELERATORS[name]
    if name not in _probed:
        try:
            _probed[name] = importlib.import_module(acc.module)
        except Exception as exc:  # ImportError, or a CUDA/ABI error at import
            _probed[name] = exc
    found = _probed[name]
    return None if isinstance(found, Exception) else found


def _why_unavailable(name: str, device: torch.device) -> str | None:
    acc = ACCELERATORS[name]
    if acc.needs_cuda and device.type != "cuda":
        return f"{acc.module} needs a CUDA device, and this run is on {device.type}"
    if probe(name) is None:
        return f"{acc.module} is not importable ({_probed[name]}); install it with: {acc.install_hint}"
    from .accel_selftest import check  # a parity self-test against the torch twin, once per process

    failed = check(name, device)
    if failed:
        return f"{acc.module} failed its parity self-test against the torch path ({failed})"
    return None


def resolve_backend(requested: str, accelerator: str, device: torch.device | str) -> str:
    """Pick ``"torch"`` or ``accelerator`` for a component, as described above."""
    device = torch.device(device)
    if requested == "torch":
        return "torch"
    if requested not in ("auto", accelerator):
        raise ValueError(f"backend must be 'auto', 'torch' or '{accelerator}', not {requested!r}")
    why = _why_unavailable(accelerator, device)
    if why is None:
        return accelerator
    if requested == accelerator:
        raise BackendUnavailable(f"backend '{accelerator}' was requested but {why}. Use backend='torch' or 'auto'.")
    if accelerator not in _warned:
        _warned.add(accelerator)
        warnings.warn(f"backend 'auto': using the pure-torch path because {why}", AcceleratorFallbackWarning, stacklevel=3)
    return "torch"
