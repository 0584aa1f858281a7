"""The coordinate convention, pinned: Y-up world, reference camera on +Z looking at the front."""

from __future__ import annotations

import math

import pytest
import torch

from mpod123.camera import (
    Cameras,
    blender_c2w_to_world,
    camera_rays,
    look_at,
    orbit_cameras,
    spherical_from_position,
    world_c2w_to_blender,
)
from mpod123.bench.synthetic import render_object


def test_reference_camera_sits_on_plus_z_and_looks_at_minus_z():
    cam = orbit_cameras(90.0, 0.0, 2.5, 40.0, 32)
    torch.testing.assert_close(cam.position[0], torch.tensor([0.0, 0.0, 2.5]), atol=1e-6, rtol=0)
    # camera axes coincide with the world axes: right +X, up +Y, looking along -Z
    torch.testing.assert_close(cam.c2w[0, :3, :3], torch.eye(3), atol=1e-6, rtol=0)


def test_azimuth_moves_from_plus_z_towards_plus_x():
    cams = orbit_cameras(90.0, [0.0, 90.0, 180.0, -90.0], 2.0)
    expected = torch.tensor([[0, 0, 2.0], [2.0, 0, 0], [0, 0, -2.0], [-2.0, 0, 0]])
    torch.testing.assert_close(cams.position, expected, atol=1e-5, rtol=0)
    top = orbit_cameras(10.0, 0.0, 2.0).position[0]
    assert top[1] > 1.9, "small polar angles sit above the object (+Y)"


def test_every_orbit_camera_looks_at_the_origin_with_up_towards_plus_y():
    cams = orbit_cameras([30.0, 60.0, 100.0, 150.0], [-170.0, -20.0, 45.0, 135.0], [1.5, 2.5, 3.0, 4.0])
    forward = -cams.c2w[:, :3, 2]
    to_origin = torch.nn.functional.normalize(-cams.position, dim=-1)
    torch.testing.assert_close(forward, to_origin, atol=1e-5, rtol=0)
    assert (cams.c2w[:, 1, 1] > 0).all(), "the camera's up axis has a +Y component"
    rot = cams.c2w[:, :3, :3]
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3).expand(4, 3, 3), atol=1e-5, rtol=0)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(4), atol=1e-5), "right-handed frames"


def test_spherical_round_trip():
    polar = torch.tensor([20.0, 90.0, 130.0])
    az = torch.tensor([-120.0, 0.0, 75.0])
    cams = orbit_cameras(polar, az, [2.0, 2.5, 3.0])
    p, a, r = spherical_from_position(cams.position)
    torch.testing.assert_close(torch.rad2deg(p), polar, atol=1e-3, rtol=0)
    torch.testing.assert_close(torch.rad2deg(a), az, atol=1e-3, rtol=0)
    torch.testing.assert_close(r, torch.tensor([2.0, 2.5, 3.0]))


def test_pole_camera_stays_finite():
    c2w = look_at(torch.tensor([[0.0, 3.0, 0.0]]))
    assert torch.isfinite(c2w).all()
    torch.testing.assert_close(-c2w[0, :3, 2], torch.tensor([0.0, -1.0, 0.0]))


def test_rays_centre_and_corners():
    cam = orbit_cameras(90.0, 0.0, 2.5, 40.0, 64)
    o, d = camera_rays(cam)
    assert o.shape == (1, 64, 64, 3)
    centre = d[0, 31:33, 31:33].mean(dim=(0, 1))
    torch.testing.assert_close(centre / centre.norm(), torch.tensor([0.0, 0.0, -1.0]), atol=1e-6, rtol=0)
    assert d[0, 0, 32, 1] > 0, "row 0 is the top of the image (+Y)"
    assert d[0, 32, 0, 0] < 0, "column 0 is the left of the image (-X)"
    # The top edge ray makes half the vertical field of view with the axis.
    top_dir = d[0, 0, :, :].mean(0)
    half_fov = math.degrees(math.atan2(top_dir[1].item(), -top_dir[2].item()))
    assert half_fov == pytest.approx(20.0 * (63 / 64), abs=0.3)


def test_front_view_shows_the_nose_and_right_view_shows_the_arm():
    """The procedural object has a red nose on +Z and a blue arm on +X."""
    cams = orbit_cameras(90.0, [0.0, 90.0, 180.0], 2.5, 40.0, 96)
    rgba = render_object(cams)

    def fraction(img, colour):
        return ((img[..., :3] - torch.tensor(colour)).abs().max(-1).values < 0.05).float().mean().item()

    red, blue = (0.85, 0.10, 0.10), (0.15, 0.25, 0.85)
    assert fraction(rgba[0], red) > 0.002, "front view (az 0, on +Z) sees the nose"
    assert fraction(rgba[2], red) == 0.0, "back view does not"
    assert fraction(rgba[1], blue) > 0.002, "az 90 (on +X) sees the arm end-on"
    # In the front view the arm (+X) appears on the image's right half.
    blue_mask = (rgba[0, ..., :3] - torch.tensor(blue)).abs().max(-1).values < 0.05
    cols = torch.nonzero(blue_mask)[:, 1].float()
    assert cols.numel() > 0 and cols.mean() > 48


def test_blender_world_conversion():
    # A Blender camera at (0, -4, 0) looking along +Y is Blender's Front view; in our
    # world that is the reference camera on +Z.
    blender_front = torch.tensor(
        [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, -4.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    )[None]
    ours = blender_c2w_to_world(blender_front)
    expected = orbit_cameras(90.0, 0.0, 4.0).c2w
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(world_c2w_to_blender(ours), blender_front)
    torch.testing.assert_close(blender_c2w_to_world(blender_front, scale=0.5)[0, :3, 3], torch.tensor([0.0, 0.0, 2.0]))


def test_cameras_validate_shapes():
    with pytest.raises(ValueError, match="c2w"):
        Cameras(torch.eye(4), torch.ones(1), 8, 8)
    with pytest.raises(ValueError, match="fov_y"):
        Cameras(torch.eye(4)[None], torch.ones(2), 8, 8)
