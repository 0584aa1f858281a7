"""Which torch build suits this machine (CUDA, ROCm, MPS or CPU), and the PyTorch wheel index that carries it,
found before anything is installed.

Why the index matters: pip's default index carries one torch per platform, which on Linux is the CUDA build
with its own CUDA libraries (several GB) whatever the machine has, and on Windows the CPU build. PyTorch
publishes each build on an index of its own (``<base>/cpu``, ``<base>/cu128``, ``<base>/rocm6.2``), so the
install asks that index for the build the hardware can use: a machine without an NVIDIA GPU gets the CPU
build (about 1.3 GB with the backend), a CUDA machine the newest CUDA build its driver runs, an AMD machine
with ROCm the matching ROCm build. The artist's Torch Index URL, when set, replaces the choice.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

CUDA_VARIANTS = ((11, 8), (12, 1), (12, 4), (12, 6), (12, 8), (12, 9), (13, 0))
"""CUDA versions PyTorch publishes builds for; the newest one the driver supports is chosen."""
PYTORCH_INDEX = "https://download.pytorch.org/whl"
"""PyTorch's own wheel indexes, one per build under this base (``/cpu``, ``/cu128``, ``/rocm6.2``)."""


@dataclass
class TorchBuild:
    """Which torch build suits this machine, found before anything is installed."""

    kind: str
    """cuda, rocm, mps or cpu"""
    variant: str
    """PyTorch's name for the build: cu128, rocm6.2, mps, cpu"""
    detail: str
    """What was found, for the status line"""
    index_url: str = ""
    """The wheel index torch is installed from; empty: pip's default, which carries this build (macOS)"""

    def describe(self) -> str:
        names = {"cuda": "NVIDIA CUDA", "rocm": "AMD ROCm", "mps": "Apple Metal (MPS)", "cpu": "CPU"}
        return f"{names.get(self.kind, self.kind)} ({self.variant}): {self.detail}"


def run_quiet(cmd: list[str], timeout: float = 10.0) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def read_quiet(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def cuda_variant(cuda: tuple[int, int]) -> str | None:
    """The newest published CUDA build the driver can run (driver reports ``CUDA Version: 12.4``)."""
    fits = [v for v in CUDA_VARIANTS if v <= cuda]
    return f"cu{fits[-1][0]}{fits[-1][1]}" if fits else None


def wheel_index(system: str, variant: str) -> str:
    """The PyTorch wheel index for a build on a system; empty where pip's default index is the right one
    (macOS) or where no index can be named (ROCm of an unknown version)."""
    if system == "Darwin" or variant in ("mps", "rocm"):
        return ""
    return f"{PYTORCH_INDEX}/{variant}"


def detect_torch_build(
    system: str | None = None,
    machine: str | None = None,
    run: Callable[[list[str]], str | None] = run_quiet,
    exists: Callable[[str], bool] = os.path.exists,
    read: Callable[[str], str | None] = read_quiet,
) -> TorchBuild:
    """NVIDIA (nvidia-smi's driver CUDA version), AMD on Linux (ROCm), Apple Silicon (MPS) or CPU, with the
    wheel index that carries that build.

    ``run``, ``exists`` and ``read`` are the only ways this looks at the machine, so the decision is
    testable for any machine.
    """
    system = system or platform.system()
    machine = (machine or platform.machine()).lower()

    def build(kind: str, variant: str, detail: str) -> TorchBuild:
        return TorchBuild(kind, variant, detail, wheel_index(system, variant))

    if system == "Darwin":
        if machine in ("arm64", "aarch64"):
            return build("mps", "mps", "Apple Silicon")
        return build("cpu", "cpu", "Intel Mac (no GPU build of torch)")
    smi = run(["nvidia-smi"])
    if smi:
        m = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", smi)
        names = run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"]) or ""
        gpu = names.strip().splitlines()[0].strip() if names.strip() else "NVIDIA GPU"
        if m:
            cuda = (int(m.group(1)), int(m.group(2)))
            variant = cuda_variant(cuda)
            if variant:
                return build("cuda", variant, f"{gpu}, driver supports CUDA {cuda[0]}.{cuda[1]}")
            return build("cpu", "cpu", f"{gpu}: the driver (CUDA {cuda[0]}.{cuda[1]}) is too old; update it for GPU use")
    if system == "Linux" and (exists("/dev/kfd") and (exists("/opt/rocm") or run(["rocminfo"]))):
        version = (read("/opt/rocm/.info/version") or "").strip() if exists("/opt/rocm/.info/version") else ""
        mm = re.match(r"(\d+)\.(\d+)", version)
        if mm:
            return build("rocm", f"rocm{mm.group(1)}.{mm.group(2)}", f"AMD GPU, ROCm {version}")
        return build("rocm", "rocm", "AMD GPU, ROCm version unknown: set Torch Index URL to PyTorch's index for it")
    return build("cpu", "cpu", "no NVIDIA or AMD GPU found")


def choose_index(override: str, build: TorchBuild) -> str:
    """Where torch is installed from: the artist's Torch Index URL when set, else the detected build's index."""
    return (override or "").strip() or build.index_url
