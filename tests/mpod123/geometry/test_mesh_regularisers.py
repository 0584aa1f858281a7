"""Stage 2's mesh regularisers in their reference forms: threestudio's vertex-normal consistency,
Magic123's unsquared (D - A) v Laplacian, and the old forms kept behind the same functions."""

from __future__ import annotations

import math

import pytest
import torch

from mpod123.geometry import Mesh, laplacian_loss, normal_consistency_loss


def _tent(h: float) -> Mesh:
    """A square fan of four triangles around a centre raised by ``h``: the centre vertex has
    degree 4 and the corners degree 3."""
    v = torch.tensor([[0.0, 0.0, h], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    f = torch.tensor([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1]])
    return Mesh(v, f)


def test_the_norm_laplacian_is_degree_times_the_offset_from_the_neighbours_mean():
    m = _tent(0.5)
    # centre: 4 * (0,0,.5) - sum of the 4 corners = (0, 0, 2); corner (1,0,0): neighbours centre,
    # (0,1,0), (0,-1,0): 3*(1,0,0) - (0,0,.5) - (0,1,0) - (0,-1,0) = (3, 0, -.5)
    expected = (2.0 + 4 * math.hypot(3.0, 0.5)) / 5
    assert laplacian_loss(m, "norm").item() == pytest.approx(expected, rel=1e-6)
    # the squared form: centre offset (0,0,.5); corner offset (1,0,0) - mean = (1, 0, -1/6)
    squared = (0.25 + 4 * (1 + 1 / 36)) / 5
    assert laplacian_loss(m, "squared").item() == pytest.approx(squared, rel=1e-6)
    assert laplacian_loss(m).item() == pytest.approx(squared, rel=1e-6), "the default keeps the old form"
    with pytest.raises(ValueError, match="norm"):
        laplacian_loss(m, "cotangent")


def test_vertex_normal_consistency_is_zero_on_a_plane_and_measures_vertex_normals_on_a_tent():
    flat = _tent(0.0)
    assert normal_consistency_loss(flat, "vertex").item() == pytest.approx(0.0, abs=1e-7)
    assert normal_consistency_loss(flat, "face").item() == pytest.approx(0.0, abs=1e-7)
    m = _tent(1.0)
    n = m.vertex_normals()
    pairs, _ = m.edges()
    expected = (1 - (n[pairs[:, 0]] * n[pairs[:, 1]]).sum(-1)).mean()
    assert normal_consistency_loss(m, "vertex").item() == pytest.approx(expected.item(), rel=1e-6)
    assert normal_consistency_loss(m, "vertex").item() > 0.05
    with pytest.raises(ValueError, match="vertex"):
        normal_consistency_loss(m, "edge")


def test_a_sliver_does_not_blow_up_the_vertex_forms_gradient():
    """Marching tets leaves near-zero-area slivers; the face form's normal of a sliver, and its
    gradient, is ill-defined, while the vertex form weighs each face by its area."""
    v = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 1e-6], [1.0, 1.0, 0.0]],
                     requires_grad=True)
    f = torch.tensor([[0, 1, 2], [1, 3, 2], [1, 4, 3]])  # face 1 is a sliver (its corner 3 almost on edge 1-2)
    face = normal_consistency_loss(Mesh(v, f), "face")
    vert = normal_consistency_loss(Mesh(v, f), "vertex")
    (g_face,) = torch.autograd.grad(face, v)
    (g_vert,) = torch.autograd.grad(vert, v)
    assert g_face.norm() > 1e3 * g_vert.norm(), (g_face.norm().item(), g_vert.norm().item())
