"""The one place that probes the optional accelerators.

Each accelerated op has a pure-torch twin with the same signature. Components
call :func:`resolve_backend` with what the user asked for:

* ``"torch"`` always works;
* a named accelerator (``"tcnn"``, ``"nerfacc"``) that cannot run raises
  :class:`BackendUnavailable`, whose message says how to install it;
* ``"auto"`` uses the accelerator when it can run and otherwise falls back to
  torch with a single warning per accelerator and process. An accelerator with
  ``auto_skip`` set (kaolin) is never picked by ``"auto"`` and not even
  imported; naming it still selects it.

Probing imports the package only when asked, so ``import mpod123`` never loads
tinycudann or nerfacc.

Some accelerators import fine without their compiled part: nerfacc 0.5.x and
nvdiffrast 0.3.x look for (or JIT-build) their CUDA extension only on the first
call, which would put a minutes-long build, or an ``AttributeError`` on
``None``, inside the first training step. Their probe therefore also loads the
extension (``Accelerator.extension``), so the build happens, or fails with a
clear reason, when the backend is chosen. The extension is only loaded for a
CUDA run: a CPU run never compiles anything.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch

from .errors import Mpod123Error
from .selftest import check as self_test_check


class BackendUnavailable(Mpod123Error, RuntimeError):
    """A named accelerator was requested but cannot run here."""


class AcceleratorFallbackWarning(UserWarning):
    """``backend="auto"`` fell back to the pure-torch reference."""


def _nerfacc_extension(module: ModuleType) -> None:
    """nerfacc 0.5.x: ``nerfacc.cuda._backend`` imports a prebuilt ``nerfacc.csrc`` or JIT-builds
    one with nvcc; without either it leaves ``_C = None`` and the first sampling call fails."""
    backend = importlib.import_module("nerfacc.cuda._backend")
    if getattr(backend, "_C", None) is None:
        raise RuntimeError(
            "nerfacc is installed but its CUDA extension is missing: no prebuilt nerfacc.csrc and no "
            "CUDA toolkit (nvcc) to build it; install a prebuilt wheel matching your torch and CUDA "
            "(see nerfacc's README) or install the CUDA toolkit"
        )


def _nvdiffrast_extension(module: ModuleType) -> None:
    """nvdiffrast 0.3.x builds its CUDA plugin on the first context; build (or fail) now."""
    get_plugin = getattr(getattr(module, "ops", module), "_get_plugin", None)
    if get_plugin is not None:
        get_plugin(gl=False)


@dataclass(frozen=True)
class Accelerator:
    name: str
    module: str
    install_hint: str
    needs_cuda: bool = True
    extension: Callable[[ModuleType], None] | None = None
    """Loads the compiled part (raising with a reason when it is missing); None when importing suffices."""
    auto_skip: str | None = None
    """Why ``backend="auto"`` never picks this one (None: auto picks it when it can run)."""


ACCELERATORS: dict[str, Accelerator] = {
    "tcnn": Accelerator(
        "tcnn",
        "tinycudann",
        "pip install ninja && pip install --no-build-isolation "
        "git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch "
        "(builds at install time: needs nvcc of the CUDA version your torch was built with and a matching C++ compiler)",
    ),
    "nerfacc": Accelerator(
        "nerfacc",
        "nerfacc",
        "pip install nerfacc ninja (its ops need CUDA; the extension compiles with nvcc and ninja on first use, minutes)",
        True,
        _nerfacc_extension,
    ),
    "kaolin": Accelerator(
        "kaolin",
        "kaolin",
        "pip install kaolin==0.18.0 -f <NVIDIA's kaolin wheel index for your torch and CUDA versions> "
        "(kaolin 0.18 supports torch 2.5.1 to 2.12.1 only)",
        auto_skip="kaolin's marching tets is plain torch, no faster than ours (0.93 s against 0.44 s at 64^3 on a "
                  "CPU), and kaolin 0.18 has no build for torch 2.13; name backend='kaolin' to use it",
    ),
    "nvdiffrast": Accelerator(
        "nvdiffrast",
        "nvdiffrast.torch",
        "pip install setuptools wheel ninja && pip install --no-build-isolation git+https://github.com/NVlabs/nvdiffrast "
        "(0.4 builds at install time: needs nvcc and a C++ compiler)",
        True,
        _nvdiffrast_extension,
    ),
}

_probed: dict[str, ModuleType | Exception] = {}
_extension: dict[str, Exception | None] = {}
_warned: set[str] = set()
_fallbacks: dict[str, str] = {}


def is_probed(name: str) -> bool:
    """Whether this process has tried to import accelerator ``name`` yet (``auto`` never imports kaolin)."""
    return name in _probed


def forget(name: str) -> None:
    """Drop what this process learnt about accelerator ``name`` (its import, its extension, its fallback
    and whether it warned), so the next resolve probes it again: after installing it, and in tests."""
    for cache in (_probed, _extension, _fallbacks):
        cache.pop(name, None)
    _warned.discard(name)


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


def probe_extension(name: str) -> str | None:
    """Import the accelerator and load its compiled extension once (building it if the library
    does that); returns why it cannot run, or None when it can."""
    acc = ACCELERATORS[name]
    module = probe(name)
    if module is None:
        return f"{acc.module} is not importable ({_probed[name]}); install it with: {acc.install_hint}"
    if acc.extension is None:
        return None
    if name not in _extension:
        try:
            acc.extension(module)
            _extension[name] = None
        except Exception as exc:  # a missing extension, a failed JIT build, a CUDA/ABI error
            _extension[name] = exc
    failed = _extension[name]
    if failed is None:
        return None
    return f"{acc.module} is importable but its CUDA extension does not load ({type(failed).__name__}: {failed})"


def unavailable_reason(name: str, device: torch.device | str) -> str | None:
    """Why accelerator ``name`` cannot run on ``device``, or None when it can (probes on CUDA only)."""
    acc = ACCELERATORS[name]
    device = torch.device(device)
    if acc.needs_cuda and device.type != "cuda":
        return f"{acc.module} needs a CUDA device, and this run is on {device.type}"
    failed = probe_extension(name)
    if failed:
        return failed
    failed = self_test_check(name, device)  # the parity self-test its owner registered, once per process
    if failed:
        return f"{acc.module} failed its parity self-test against the torch path ({failed})"
    return None


_why_unavailable = unavailable_reason


def fallback_reasons() -> dict[str, str]:
    """Accelerator -> why ``auto`` last fell back to torch for it in this process (for run records)."""
    return dict(_fallbacks)


def resolve_backend(requested: str, accelerator: str, device: torch.device | str) -> str:
    """Pick ``"torch"`` or ``accelerator`` for a component, as described above."""
    device = torch.device(device)
    if requested == "torch":
        return "torch"
    if requested not in ("auto", accelerator):
        raise ValueError(f"backend must be 'auto', 'torch' or '{accelerator}', not {requested!r}")
    skip = ACCELERATORS[accelerator].auto_skip
    if requested == "auto" and skip:
        _fallbacks[accelerator] = skip  # by design: no warning, nothing imported
        return "torch"
    why = unavailable_reason(accelerator, device)
    if why is None:
        return accelerator
    if requested == accelerator:
        raise BackendUnavailable(f"backend '{accelerator}' was requested but {why}. Use backend='torch' or 'auto'.")
    _fallbacks[accelerator] = why
    if accelerator not in _warned:
        _warned.add(accelerator)
        warnings.warn(f"backend 'auto': using the pure-torch path because {why}", AcceleratorFallbackWarning, stacklevel=3)
    return "torch"
