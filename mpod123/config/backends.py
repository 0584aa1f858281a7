"""One ``Backend`` type per accelerator kind: each lists ``auto``, ``torch`` (the pure-torch twin, any
device) and the accelerators that implement that op, so ``--set`` accepts only a backend the component
can use (``--set detail.rasterizer_backend=tcnn`` is refused before a run starts, with the choices).

``auto`` uses the accelerator when it can run and otherwise falls back to torch with one warning; a
named accelerator that cannot run raises ``BackendUnavailable`` (:mod:`mpod123.runtime.accelerators`).
"""

from __future__ import annotations

from typing import Literal

HashGridBackend = Literal["auto", "torch", "tcnn"]
"""The hash-grid encoding: tiny-cuda-nn (``tcnn``, CUDA)."""
MarcherBackend = Literal["auto", "torch", "nerfacc"]
"""Occupancy-grid ray marching: nerfacc (CUDA)."""
RasterizerBackend = Literal["auto", "torch", "nvdiffrast"]
"""The mesh rasterizer of stage 2 and texturing: nvdiffrast (CUDA)."""
MarchingTetsBackend = Literal["auto", "torch", "kaolin"]
"""Marching tetrahedra of the DMTet: kaolin (CUDA)."""

__all__ = ["HashGridBackend", "MarcherBackend", "MarchingTetsBackend", "RasterizerBackend"]
