"""Parity self-tests of the accelerators against their pure-torch twins, on tiny inputs.

An accelerator that imports can still be wrong: a wheel built for another
GPU architecture, a mismatched CUDA runtime, a silent layout change. Before
``backend="auto"`` picks one, :func:`check` runs its self-test once per
process (tiny inputs, well under a second on a GPU) and compares it with the
torch reference; one that fails is remembered, reported by ``mpod123
doctor`` and never chosen by ``auto`` (a named request gets
``BackendUnavailable`` with the reason). ``mpod123.runtime.accelerators`` asks here.

The tests mirror the parity tests in tests/ (tolerances included), at
smaller sizes. Each raises on a mismatch; anything raised is a failure.
"""

from __future__ import annotations

from typing import Callable

import torch

SelfTest = Callable[[torch.device], None]

_results: dict[str, str | None] = {}
"""accelerator -> None (passed) or the reason it failed, for this process"""
_running: set[str] = set()


def _tcnn(device: torch.device) -> None:
    from ..config import HashGridConfig
    from ..fields.hash_grid import HashEncoding

    cfg = dict(n_levels=4, log2_hashmap_size=12, base_resolution=8, per_level_scale=1.6)
    ref = HashEncoding(HashGridConfig(**cfg, backend="torch"), device=device)
    acc = HashEncoding(HashGridConfig(**cfg, backend="tcnn"), device=device)
    g = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        ref.params.copy_(torch.randn(ref.params.shape, generator=g) * 0.1)
        acc.params.copy_(ref.params)
    x = torch.rand(512, 3, generator=g).to(device)
    torch.testing.assert_close(acc(x), ref(x), atol=1e-5, rtol=1e-4)


def _kaolin(device: torch.device) -> None:
    from ..geometry import marching_tets
    from ..geometry.tet_grid import tet_grid

    grid = tet_grid(8).to(device)
    sdf = grid.vertices.norm(dim=-1) - 0.6
    ref = marching_tets(grid.vertices, sdf, grid.tets, backend="torch")
    acc = marching_tets(grid.vertices, sdf, grid.tets, backend="kaolin")
    if acc.n_faces != ref.n_faces:
        raise AssertionError(f"kaolin made {acc.n_faces} faces, the reference {ref.n_faces}")
    va, vr = float(acc.signed_volume()), float(ref.signed_volume())
    if abs(va - vr) > 1e-4 * abs(vr):
        raise AssertionError(f"signed volume {va} vs {vr} (winding or positions differ)")


def _nerfacc(device: torch.device) -> None:
    from ..camera import orbit_cameras
    from ..config import HashGridConfig, NeRFFieldConfig, OccupancyGridConfig, RenderConfig
    from ..fields.nerf_field import NeRFField
    from ..rendering.occupancy_grid import OccupancyGrid
    from ..rendering.volume_renderer import VolumeRenderer

    torch.manual_seed(0)  # inside check()'s fork_rng: the caller's generator is restored afterwards
    cfg = NeRFFieldConfig(hash_grid=HashGridConfig(n_levels=4, log2_hashmap_size=12, backend="torch"), blob_density=40.0)
    field = NeRFField(cfg, device=device)
    grid = OccupancyGrid(OccupancyGridConfig(resolution=16), device=device)
    rc = RenderConfig(resolution=16, samples_per_ray=64)
    ref = VolumeRenderer(field, grid, rc, backend="torch")
    acc = VolumeRenderer(field, grid, rc, backend="nerfacc")
    for update in range(4):
        grid.update(update * 16, field.density, ref.step_size)
    cams = orbit_cameras([90.0], [0.0], 2.5, 40.0, 16, device=device)
    bg = torch.ones(1, 3, device=device)
    with torch.no_grad():
        a, b = ref.render(cams, bg), acc.render(cams, bg)
    for name, x, y in (("opacity", a.opacity, b.opacity), ("rgb", a.rgb, b.rgb)):
        err = float((x - y).abs().mean())
        if err > 0.01:
            raise AssertionError(f"{name} differs from the reference by {err:.4f} on average")


def _nvdiffrast(device: torch.device) -> None:
    from ..camera import orbit_cameras
    from ..geometry import Mesh
    from ..geometry.marching_tets import marching_tets_reference
    from ..geometry.tet_grid import tet_grid
    from ..rendering.mesh_renderer import MeshRenderer

    g = tet_grid(8)
    sphere = marching_tets_reference(g.vertices, g.vertices.norm(dim=-1) - 0.5, g.tets)
    mesh = Mesh(sphere.vertices.float().to(device), sphere.faces.to(device))
    cams = orbit_cameras([90.0], [30.0], 2.5, 40.0, 32, device=device)
    with torch.no_grad():
        a = MeshRenderer("torch", device).render(mesh, cams)
        b = MeshRenderer("nvdiffrast", device).render(mesh, cams)
    agree = float((a.mask == b.mask).float().mean())
    if agree < 0.98:
        raise AssertionError(f"coverage agrees on only {agree:.3f} of the pixels")


SELF_TESTS: dict[str, SelfTest] = {"tcnn": _tcnn, "kaolin": _kaolin, "nerfacc": _nerfacc, "nvdiffrast": _nvdiffrast}
"""Accelerator name (as in ``mpod123.runtime.accelerators.ACCELERATORS``) -> its parity self-test."""


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
