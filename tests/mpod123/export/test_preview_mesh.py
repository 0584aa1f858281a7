"""Live 3D previews: the extraction against shapes whose surface is known, the GLB, and the stage's schedule."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from mpod123.config import MeshPreviewConfig
from mpod123.export.gltf import GLBError
from mpod123.export.preview_mesh import (
    colour_mesh,
    density_surface,
    encode_preview_glb,
    linear_to_srgb,
    preview_glb,
    read_preview_glb,
    srgb_to_linear,
)
from mpod123.runtime.progress import MeshPreview, StageDone, to_dict

R, T = 0.6, 5.0


def sphere_density(x: torch.Tensor) -> torch.Tensor:
    """Density T exactly at radius R, rising inwards and falling outwards (0 far outside)."""
    return (T * (2.0 - x.norm(dim=-1) / R)).clamp(min=0.0)


def constant_colour(rgb):
    return lambda x: torch.tensor(rgb, dtype=x.dtype).expand(x.shape[0], 3)


def test_a_sphere_density_gives_a_closed_outward_sphere_within_a_cell():
    res = 32
    cell = 2.0 / res
    mesh = density_surface(sphere_density, 1.0, res, T)
    radius = mesh.vertices.norm(dim=-1)
    assert mesh.n_faces > 500
    assert float((radius - R).abs().max()) < cell
    assert mesh.is_closed() and mesh.euler_characteristic() == 2
    volume = float(mesh.signed_volume())  # positive: the faces wind outwards
    assert volume == pytest.approx(4.0 / 3.0 * math.pi * R**3, rel=0.05)


def test_the_occupancy_grid_masks_the_density():
    res = 32
    cell = 2.0 / res
    mesh = density_surface(sphere_density, 1.0, res, T, occupied_fn=lambda x: x[:, 0] < 0.0)
    assert mesh.n_faces > 100
    assert float(mesh.vertices[:, 0].max()) <= cell + 1e-6, "nothing beyond the occupied half"
    assert mesh.is_closed(), "a masked cell counts as empty, so the cut surface is closed too"


def test_nothing_above_the_threshold_gives_no_preview():
    mesh = density_surface(lambda x: torch.zeros(x.shape[0]), 1.0, 16, T)
    assert mesh.n_faces == 0
    assert preview_glb(mesh, constant_colour((1.0, 0.0, 0.0)), 1000, 300_000) is None


def test_colours_are_the_colour_networks_output_and_survive_the_glb():
    trimesh = pytest.importorskip("trimesh")
    rgb = (0.2, 0.5, 0.8)
    mesh = density_surface(sphere_density, 1.0, 24, T)
    glb, coloured = preview_glb(mesh, constant_colour(rgb), 800, 300_000)
    assert np.allclose(coloured.colors, rgb)
    back = read_preview_glb(glb)
    assert back.vertices.shape == coloured.vertices.shape and back.faces.shape[0] <= 800
    assert np.abs(back.colors - np.array(rgb)).max() < 0.01  # one byte of linear colour
    loaded = trimesh.load(io.BytesIO(glb), file_type="glb", force="mesh")
    assert loaded.vertices.shape[0] == back.vertices.shape[0] > 0
    expected = np.round(srgb_to_linear(np.array(rgb)) * 255)  # glTF's COLOR_0 is linear
    assert np.array_equal(loaded.visual.vertex_colors[:, :3], np.broadcast_to(expected, (len(loaded.vertices), 3)))


def test_colours_vary_with_the_network_at_each_vertex():
    mesh = density_surface(sphere_density, 1.0, 24, T)
    coloured = colour_mesh(mesh, lambda x: (x * 0.5 + 0.5).clamp(0, 1))
    assert np.allclose(coloured.colors, np.clip(coloured.vertices * 0.5 + 0.5, 0, 1), atol=1e-6)
    back = read_preview_glb(encode_preview_glb(coloured))
    assert np.abs(back.colors - coloured.colors).max() < 0.02


def test_the_face_budget_and_the_byte_cap_hold():
    mesh = density_surface(sphere_density, 1.0, 48, T)
    assert mesh.n_faces > 20_000
    glb, small = preview_glb(mesh, constant_colour((0.5, 0.5, 0.5)), 5000, 300_000)
    assert small.faces.shape[0] <= 5000 and len(glb) <= 300_000
    radius = np.linalg.norm(small.vertices, axis=1)
    assert np.abs(radius - R).max() < 2.0 / 48 * 2, "decimation keeps the shape"
    tight, fitted = preview_glb(mesh, constant_colour((0.5, 0.5, 0.5)), 20_000, 60_000)
    assert len(tight) <= 60_000 and fitted.faces.shape[0] < 20_000


def test_the_reader_refuses_damaged_files():
    mesh = density_surface(sphere_density, 1.0, 12, T)
    glb = encode_preview_glb(colour_mesh(mesh, constant_colour((1.0, 1.0, 1.0))))
    for bad in (b"", glb[:40], glb[:-4], b"glTX" + glb[4:], glb[:4] + b"\x01" + glb[5:]):
        with pytest.raises(GLBError):
            read_preview_glb(bad)


def test_srgb_round_trip():
    c = np.linspace(0, 1, 11, dtype=np.float32)
    assert np.allclose(linear_to_srgb(srgb_to_linear(c)), c, atol=1e-6)


def test_interval_is_a_tenth_of_the_steps_by_default():
    assert MeshPreviewConfig().interval(5000) == 500
    assert MeshPreviewConfig().interval(6) == 1
    assert MeshPreviewConfig(every=7).interval(5000) == 7


def test_a_stage_sends_mesh_previews_on_its_schedule_and_times_them(tiny_cfg):
    from mpod123.bench.synthetic import turntable_dataset
    from mpod123.guidance import MultiViewSupervision
    from mpod123.stages import OutlineStage, ReferenceView

    views = turntable_dataset(4, 16)
    tiny_cfg.steps, tiny_cfg.preview_every = 5, 100
    tiny_cfg.mesh_preview = MeshPreviewConfig(every=2, grid_resolution=16, max_faces=400)
    events = []
    stage = OutlineStage(tiny_cfg, ReferenceView(views.images[0], views.cameras[0]),
                         MultiViewSupervision(views.images, views.cameras), callback=events.append)
    stage.run()
    previews = [e for e in events if isinstance(e, MeshPreview)]
    assert [p.step for p in previews] == [2, 4, 5], "every 2 steps, and at the end"
    assert all(p.faces <= 400 and p.vertices == read_preview_glb(p.glb).vertices.shape[0] for p in previews)
    assert all(p.seconds > 0 for p in previews)
    stats = stage.mesh_previews.stats()
    assert stats["count"] == 3 and stats["seconds"] == pytest.approx(sum(p.seconds for p in previews), abs=1e-3)
    assert isinstance(events[-1], StageDone)
    data = to_dict(previews[0])
    assert data["kind"] == "preview_mesh" and "glb" not in data and data["bytes"] == len(previews[0].glb)

    quiet = []
    tiny_cfg.preview_every = 0  # previews off: no mesh previews either
    OutlineStage(tiny_cfg, ReferenceView(views.images[0], views.cameras[0]),
                 MultiViewSupervision(views.images, views.cameras), callback=quiet.append).run(steps=1)
    assert not any(isinstance(e, MeshPreview) for e in quiet)
