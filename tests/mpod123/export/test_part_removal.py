"""Dropping the floaters an SDF grid leaves: threestudio's rule (parts under 1 % of the largest
part) against the old one (under 5 % of the whole surface)."""

from __future__ import annotations

import pytest
import torch
import trimesh

from mpod123.geometry import Mesh


def _parts(*radii: float) -> Mesh:
    """Separate spheres of these radii, side by side (areas in proportion to radius^2)."""
    verts, faces, offset, x = [], [], 0, 0.0
    for r in radii:
        s = trimesh.creation.icosphere(subdivisions=2, radius=r)
        verts.append(torch.tensor(s.vertices, dtype=torch.float32) + torch.tensor([x + r, 0.0, 0.0]))
        faces.append(torch.tensor(s.faces, dtype=torch.long) + offset)
        offset += len(s.vertices)
        x += 2 * r + 0.1
    return Mesh(torch.cat(verts), torch.cat(faces))


def test_threestudios_rule_keeps_a_real_second_part_that_the_total_area_rule_drops():
    # areas 1 : 0.04 : 0.0025 of the largest; 0.04 / 1.0425 = 3.8 % of the total
    mesh = _parts(1.0, 0.2, 0.05)
    assert int(mesh.face_components().unique().numel()) == 3
    largest = mesh.without_small_parts(0.01, "largest")
    total = mesh.without_small_parts(0.05, "total")
    assert int(largest.face_components().unique().numel()) == 2, "1 % of the largest: the 4 % part stays"
    assert int(total.face_components().unique().numel()) == 1, "5 % of the total: it goes"
    assert largest.n_faces == 2 * mesh.n_faces // 3 and largest.n_vertices == 2 * mesh.n_vertices // 3
    assert largest.vertices[:, 0].max() == pytest.approx(2.5, abs=1e-5), "the kept small sphere ends at x = 2.5"
    assert mesh.without_small_parts(0.0, "largest") is mesh, "0 keeps every part"
    with pytest.raises(ValueError, match="largest"):
        mesh.without_small_parts(0.01, "biggest")


def test_an_object_of_many_equal_pieces_keeps_them_relative_to_the_largest_and_loses_them_all_to_the_total():
    mesh = _parts(*[0.1] * 25)  # 25 pieces, each 4 % of the surface
    assert mesh.without_small_parts(0.05, "largest").n_faces == mesh.n_faces
    assert mesh.without_small_parts(0.05, "total").n_faces == 0, "the old rule left nothing to export"
