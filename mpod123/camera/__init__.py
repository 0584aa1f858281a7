"""Cameras in the project's coordinate convention (see :mod:`mpod123.camera.cameras`)."""

from .cameras import (
    Cameras,
    camera_rays,
    focal_from_fov,
    look_at,
    orbit_cameras,
    orbit_position,
    sample_orbit_cameras,
    spherical_from_position,
)
from .conventions import BLENDER_TO_WORLD, blender_c2w_to_world, world_c2w_to_blender

__all__ = [
    "BLENDER_TO_WORLD",
    "Cameras",
    "blender_c2w_to_world",
    "camera_rays",
    "focal_from_fov",
    "look_at",
    "orbit_cameras",
    "orbit_position",
    "sample_orbit_cameras",
    "spherical_from_position",
    "world_c2w_to_blender",
]
