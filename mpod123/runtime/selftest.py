"""Parity self-tests of the accelerators against their pure-torch twins, on tiny inputs.

An accelerator that imports can still be wrong: a wheel built for another
GPU architecture, a mismatched CUDA runtime, a silent layout change. Before
``backend="auto"`` picks one, :func:`check` runs its self-test once per
process (tiny inputs, well under a second on a GPU) and compares it with the
torch reference; one that fails is remembered, reported by ``mpod123
doctor`` and never chosen by ``auto`` (a named request gets
``BackendUnavailable`` with the reason). ``mpod123.runtime.accelerators`` asks here.

The self-tests live with the ops they check and are handed in here
(:func:`register`), as a layer hands its own code to a lower one: the
registry knows no op, so it never imports the layers above it. The hash
grid registers tcnn's, marching tets kaolin's, the volume renderer nerfacc's
and the mesh renderer nvdiffrast's; importing :mod:`mpod123.rendering`
registers all four. Each mirrors its parity test in tests/ (tolerances
included), at smaller sizes, and raises on a mismatch; anything raised is a
failure. An accelerator with no registered self-test is not checked.
"""

from __future__ import annotations

from typing import Callable

import torch

SelfTest = Callable[[torch.device], None]

_results: dict[str, str | None] = {}
"""accelerator -> None (passed) or the reason it failed, for this process"""
_running: set[str] = set()


SELF_TESTS: dict[str, SelfTest] = {}
"""Accelerator name (as in ``mpod123.runtime.accelerators.ACCELERATORS``) -> its parity self-test,
filled by :func:`register` from the modules that own the accelerated ops."""


def register(name: str, test: SelfTest) -> SelfTest:
    """Register ``test`` as accelerator ``name``'s parity self-test (the module that owns the op calls this
    at import, so the test is there before that module can ask for the accelerator); returns ``test``."""
    SELF_TESTS[name] = test
    return test


def check(name: str, device: torch.device | str) -> str | None:
    """None when ``name`` passed its self-test in this process (running it the first time), else why not.

    While a self-test runs, its own components ask for the accelerator by
    name; those nested calls are let through (the test is what decides).
    """
    if name in _running or name not in SELF_TESTS:
        return None
    if name not in _results:
        _running.add(name)
        dev = torch.device(device)
        cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
        try:
            # the caller's random state is left exactly as it was: a run seeded from the global generator
            # draws the same numbers whether or not a self-test ran inside it
            with torch.random.fork_rng(devices=cuda):
                SELF_TESTS[name](dev)
            _results[name] = None
        except Exception as exc:  # noqa: BLE001  any failure, including a CUDA error, means "do not use it"
            said = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            _results[name] = f"{type(exc).__name__}: {said[:300]}".strip()
        finally:
            _running.discard(name)
    return _results[name]


def results() -> dict[str, str | None]:
    """The self-tests run so far in this process: name -> None (passed) or the reason it failed."""
    return dict(_results)


def forget(name: str | None = None) -> None:
    """Drop remembered results (all, or one), so the next :func:`check` runs the test again."""
    if name is None:
        _results.clear()
    else:
        _results.pop(name, None)
