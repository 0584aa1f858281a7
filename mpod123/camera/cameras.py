"""Orbit cameras, intrinsics and rays, in the project's one coordinate convention.

World: right-handed, Y-up (as glTF). The object fits in the unit sphere at the
origin and its front faces +Z.

Orbit camera at polar ``theta`` (measured from +Y) and azimuth ``phi``::

    position = r * (sin(theta) sin(phi), cos(theta), sin(theta) cos(phi))

and it looks at the origin. The reference view (theta = 90 deg, phi = 0) therefore
sits on +Z and sees the object's front; phi = 90 deg sits on +X. Increasing the
azimuth moves the camera from +Z towards +X, i.e. counter-clockwise seen from
above (+Y).

Camera frame: OpenGL/Blender, as in NeRF-synthetic ``transforms.json``. Columns
0, 1, 2 of the camera-to-world rotation are the camera's right, up and
*backward* axes; the camera looks along -column 2. Image rows run downwards.
At the reference view the camera axes coincide with the world axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

WORLD_UP = (0.0, 1.0, 0.0)


def orbit_position(polar: Tensor, azimuth: Tensor, radius: Tensor) -> Tensor:
    """Camera centres (..., 3) for angles in radians."""
    st = torch.sin(polar)
    return torch.stack(
        [radius * st * torch.sin(azimuth), radius * torch.cos(polar), radius * st * torch.cos(azimuth)], dim=-1
    )


def look_at(eye: Tensor, target: Tensor | None = None) -> Tensor:
    """Camera-to-world matrices (B, 4, 4) for cameras at ``eye`` (B, 3) looking at ``target``.

    The camera's up axis is the world's +Y projected onto the image plane. At the
    poles (looking straight along Y) that is undefined; there +Z is used as the
    reference up so that the matrix stays finite.
    """
    if target is None:
        target = torch.zeros_like(eye)
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    up = torch.tensor(WORLD_UP, dtype=eye.dtype, device=eye.device).expand_as(forward)
    right = torch.linalg.cross(forward, up, dim=-1)
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    alt_up = torch.tensor((0.0, 0.0, -1.0), dtype=eye.dtype, device=eye.device).expand_as(forward)
    right = torch.where(degenerate, torch.linalg.cross(forward, alt_up, dim=-1), right)
    right = torch.nn.functional.normalize(right, dim=-1)
    cam_up = torch.linalg.cross(right, forward, dim=-1)
    c2w = torch.zeros(eye.shape[0], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = cam_up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = eye
    c2w[:, 3, 3] = 1.0
    return c2w


def spherical_from_position(position: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of :func:`orbit_position`: (polar, azimuth, radius), angles in radians."""
    radius = position.norm(dim=-1)
    polar = torch.acos(torch.clamp(position[..., 1] / radius.clamp_min(1e-12), -1.0, 1.0))
    azimuth = torch.atan2(position[..., 0], position[..., 2])
    return polar, azimuth, radius


def focal_from_fov(fov: Tensor | float, size: int) -> Tensor | float:
    """Focal length in pixels for a field of view (radians) across ``size`` pixels."""
    if isinstance(fov, Tensor):
        return 0.5 * size / torch.tan(0.5 * fov)
    return 0.5 * size / math.tan(0.5 * fov)


@dataclass
class Cameras:
    """A batch of pinhole cameras with square pixels and a centred principal point.

    ``fov_y`` is the vertical field of view in radians. The spherical angles are
    derived from the camera centres, so cameras read from a dataset have them too
    (the Zero-1-to-3 guidance needs them).
    """

    c2w: Tensor
    fov_y: Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.c2w.ndim != 3 or self.c2w.shape[1:] != (4, 4):
            raise ValueError(f"c2w must be (B, 4, 4), got {tuple(self.c2w.shape)}")
        if self.fov_y.shape != (self.c2w.shape[0],):
            raise ValueError(f"fov_y must be ({self.c2w.shape[0]},), got {tuple(self.fov_y.shape)}")

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, index: int | slice | Tensor) -> Cameras:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Cameras(self.c2w[index], self.fov_y[index], self.width, self.height)

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def position(self) -> Tensor:
        return self.c2w[:, :3, 3]

    @property
    def polar(self) -> Tensor:
        return spherical_from_position(self.position)[0]

    @property
    def azimuth(self) -> Tensor:
        return spherical_from_position(self.position)[1]

    @property
    def radius(self) -> Tensor:
        return self.position.norm(dim=-1)

    @property
    def focal(self) -> Tensor:
        return focal_from_fov(self.fov_y, self.height)

    def to(self, device: torch.device | str) -> Cameras:
        return Cameras(self.c2w.to(device), self.fov_y.to(device), self.width, self.height)

    def resized(self, width: int, height: int) -> Cameras:
        """The same cameras rendering at another image size (the field of view is kept)."""
        return Cameras(self.c2w, self.fov_y, width, height)

    @staticmethod
    def cat(items: list[Cameras]) -> Cameras:
        sizes = {(c.width, c.height) for c in items}
        if len(sizes) != 1:
            raise ValueError(f"cannot concatenate cameras of different image sizes {sorted(sizes)}")
        return Cameras(
            torch.cat([c.c2w for c in items]), torch.cat([c.fov_y for c in items]), items[0].width, items[0].height
        )


def orbit_cameras(
    polar_deg: Tensor | list[float] | float,
    azimuth_deg: Tensor | list[float] | float,
    radius: Tensor | list[float] | float = 2.5,
    fov_deg: Tensor | list[float] | float = 40.0,
    width: int = 128,
    height: int | None = None,
    device: torch.device | str = "cpu",
) -> Cameras:
    """Cameras on the orbit, looking at the origin. Scalars broadcast against lists."""
    args = [torch.as_tensor(v, dtype=torch.float32, device=device).reshape(-1) for v in (polar_deg, azimuth_deg, radius, fov_deg)]
    polar, azimuth, rad, fov = torch.broadcast_tensors(*args)
    eye = orbit_position(torch.deg2rad(polar), torch.deg2rad(azimuth), rad)
    return Cameras(look_at(eye), torch.deg2rad(fov).clone(), width, height if height is not None else width)


def camera_rays(cameras: Cameras) -> tuple[Tensor, Tensor]:
    """World-space ray origins and unit directions, each (B, H, W, 3), through pixel centres."""
    dev, dtype = cameras.device, cameras.c2w.dtype
    w, h = cameras.width, cameras.height
    ys, xs = torch.meshgrid(
        torch.arange(h, device=dev, dtype=dtype) + 0.5, torch.arange(w, device=dev, dtype=dtype) + 0.5, indexing="ij"
    )
    focal = cameras.focal.to(dtype)[:, None, None]
    dirs_cam = torch.stack(
        [(xs - 0.5 * w) / focal, -(ys - 0.5 * h) / focal, -torch.ones_like(xs).expand_as(focal * xs)], dim=-1
    )  # (B, H, W, 3), camera looks down -z, rows go down
    rot = cameras.c2w[:, :3, :3]
    dirs = torch.einsum("bij,bhwj->bhwi", rot, dirs_cam)
    dirs = torch.nn.functional.normalize(dirs, dim=-1)
    origins = cameras.c2w[:, None, None, :3, 3].expand_as(dirs)
    return origins, dirs


def sample_orbit_cameras(
    n: int,
    polar_range_deg: tuple[float, float],
    azimuth_range_deg: tuple[float, float],
    radius_range: tuple[float, float],
    fov_range_deg: tuple[float, float],
    resolution: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Cameras:
    """``n`` random orbit cameras, uniform in each range (drawn where ``generator`` lives: a device
    generator draws on the device, so no draw is copied there)."""
    where = generator.device if generator is not None else None

    def uniform(lo_hi: tuple[float, float]) -> Tensor:
        lo, hi = lo_hi
        return lo + (hi - lo) * torch.rand(n, generator=generator, device=where)

    polar, azimuth, radius, fov = (uniform(r) for r in (polar_range_deg, azimuth_range_deg, radius_range, fov_range_deg))
    return orbit_cameras(polar, azimuth, radius, fov, resolution, device=device)
