"""Choosing the torch device from a user's ``--device`` (one rule for every command), and whether work on it
uses torch's deterministic algorithms."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .errors import DeviceError


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when torch sees a GPU, else the CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"--device {name!r}: not a device; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: torch sees no CUDA device here; use --device cpu or auto")
    return device


CUBLAS_DETERMINISTIC = ":4096:8"


def deterministic_mode(requested: bool | None, device: torch.device) -> bool:
    """Whether work on ``device`` uses torch's deterministic algorithms (None: on the CPU yes, on CUDA no).

    On the CPU they cost about 3 % of a stage-1 step and are needed: with two or more threads,
    ``index_add`` (the hash grid's gradient, ray compositing) sums in a varying order, so two runs of one
    seed drift apart. On CUDA, determinism needs ``CUBLAS_WORKSPACE_CONFIG`` before the first cuBLAS
    call, or every GEMM stays non-deterministic; it is set here (unless the user set it), and the runner
    calls this before any CUDA work of its own.
    """
    deterministic = device.type != "cuda" if requested is None else bool(requested)
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
    return deterministic


@contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """torch's deterministic algorithms on (warn only, for ops without such a kernel) or off inside the
    block, and the caller's setting back afterwards."""
    was = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])
