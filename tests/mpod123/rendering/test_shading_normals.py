"""Shading normals: interpolated vertex normals (Magic123) against flat face normals, on a sphere
whose true normal at every pixel is known."""

from __future__ import annotations

import pytest
import torch
import trimesh

from mpod123.camera import camera_rays, orbit_cameras
from mpod123.geometry import Mesh
from mpod123.rendering import MeshRenderer

RADIUS = 0.6


def _mean_error_deg(normals: str) -> float:
    ico = trimesh.creation.icosphere(subdivisions=4, radius=RADIUS)
    mesh = Mesh(torch.tensor(ico.vertices, dtype=torch.float32), torch.tensor(ico.faces, dtype=torch.long))
    cams = orbit_cameras([70.0, 100.0], [15.0, 200.0], 2.5, 40.0, 48)
    out = MeshRenderer("torch").render(mesh, cams, with_normals=True, normals=normals)
    o, d = camera_rays(cams)
    # the true normal: where each pixel's ray meets the sphere, normalised
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - RADIUS**2)
    hit = disc > 0
    t = -b - disc.clamp_min(0).sqrt()
    truth = torch.nn.functional.normalize(o + t[..., None] * d, dim=-1)
    # pixels inside both the sphere and the mesh, away from the silhouette
    inner = hit & (out.opacity[..., 0] > 0.999) & (-b - disc.clamp_min(0).sqrt() > 0)
    inner &= disc > 0.05 * RADIUS**2
    cos = (out.normals[inner] * truth[inner]).sum(-1).clamp(-1, 1)
    assert inner.sum() > 500
    assert torch.allclose(out.normals[inner].norm(dim=-1), torch.ones(int(inner.sum())), atol=1e-4)
    return torch.rad2deg(torch.arccos(cos)).mean().item()


def test_interpolated_vertex_normals_err_several_times_less_than_flat_faces_on_a_sphere():
    flat, smooth = _mean_error_deg("face"), _mean_error_deg("vertex")
    assert 0.8 < flat < 3.0, flat
    assert smooth < 0.5, smooth
    assert smooth < flat / 3, (flat, smooth)


def test_an_unknown_normal_kind_is_refused():
    with pytest.raises(ValueError, match="vertex"):
        MeshRenderer("torch").render(Mesh(torch.zeros(3, 3), torch.tensor([[0, 1, 2]])),
                                     orbit_cameras([90.0], [0.0], 2.5, 40.0, 8), with_normals=True, normals="smooth")
