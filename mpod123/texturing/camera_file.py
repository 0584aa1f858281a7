"""Where the photo was taken from: the front camera, or a camera file in the mesh's own coordinates.

The camera file is JSON::

    {"position": [x, y, z], "look_at": [x, y, z], "fov_y_deg": 40.0, "up": [0, 1, 0]}

* ``position``: the camera's centre, in the coordinates of the mesh file (glTF's
  Y-up world for .glb/.gltf, after the file's node transforms; the file's own
  for OBJ), in the file's units.
* ``look_at``: a point the optical axis passes through (same coordinates).
* ``fov_y_deg``: the vertical field of view of the photo, in degrees (0 < fov < 180).
* ``up`` (optional, default +Y): a direction that appears upwards in the photo;
  it fixes the roll and must not be parallel to the viewing direction.

No other keys are allowed (a misspelt key is an error, not a silent default).
The photo is used at its own framing with this camera (no re-centring). With
``front`` (the default) the photo is framed like ``generate``'s input and seen
from the pipeline's reference camera (on +Z, looking at the origin); the mesh
is then scaled so that its front silhouette is framed the same way, and the
camera slides sideways to centre it (or, for a mesh seen end on, comes closer
along its axis, so the mesh never leaves the field's cube): :func:`fit_to_front`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..runtime.errors import Mpod123Error

if TYPE_CHECKING:  # parsing and validating need only the standard library (the backend checks submits with it)
    from torch import Tensor

    from ..camera import Cameras
    from ..config import CameraConfig
    from .normalisation import Normalisation

KEYS = {"position", "look_at", "fov_y_deg", "up"}
MAX_CAMERA_FILE_BYTES = 64 << 10


class CameraFileError(Mpod123Error, ValueError):
    """A camera description that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class CameraSpec:
    position: tuple[float, float, float]
    look_at: tuple[float, float, float]
    fov_y_deg: float
    up: tuple[float, float, float] = (0.0, 1.0, 0.0)

    def to_dict(self) -> dict:
        return {"position": list(self.position), "look_at": list(self.look_at), "fov_y_deg": self.fov_y_deg,
                "up": list(self.up)}

    def cameras(self, width: int, height: int, normalisation: Normalisation | None = None) -> Cameras:
        """The camera at this image size, moved into the normalised world when given."""
        import torch

        from ..camera import Cameras
        eye = torch.tensor(self.position, dtype=torch.float64)
        target = torch.tensor(self.look_at, dtype=torch.float64)
        if normalisation is not None:
            eye, target = normalisation.apply(eye), normalisation.apply(target)
        c2w = look_at_with_up(eye, target, torch.tensor(self.up, dtype=torch.float64))
        return Cameras(c2w[None].float(), torch.tensor([math.radians(self.fov_y_deg)]), width, height)


def look_at_with_up(eye: Tensor, target: Tensor, up: Tensor) -> Tensor:
    """A camera-to-world matrix (4, 4), OpenGL camera frame (x right, y up, looking along -z)."""
    import torch
    forward = torch.nn.functional.normalize(target - eye, dim=0)
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, up), dim=0)
    cam_up = torch.linalg.cross(right, forward)
    c2w = torch.eye(4, dtype=eye.dtype)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, cam_up, -forward, eye
    return c2w


def _vector(data: dict, key: str) -> tuple[float, float, float]:
    value = data[key]
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)):
        raise CameraFileError(f"camera {key!r} must be a list of three numbers, like [0, 0, 2.5]; got {value!r}")
    if not all(math.isfinite(float(x)) for x in value):
        raise CameraFileError(f"camera {key!r} must be finite numbers; got {value!r}")
    return tuple(float(x) for x in value)


def parse_camera(data: Any) -> CameraSpec:
    """Validate a decoded camera description (see the module docstring for the schema)."""
    if not isinstance(data, dict):
        raise CameraFileError('the camera must be a JSON object such as {"position": [0, 0, 2.5], '
                              '"look_at": [0, 0, 0], "fov_y_deg": 40}')
    unknown = set(data) - KEYS
    if unknown:
        raise CameraFileError(f"unknown camera key(s) {', '.join(sorted(map(str, unknown)))}: "
                              f"the keys are {', '.join(sorted(KEYS))}")
    missing = {"position", "look_at", "fov_y_deg"} - set(data)
    if missing:
        raise CameraFileError(f"the camera needs {', '.join(sorted(missing))}")
    position, target = _vector(data, "position"), _vector(data, "look_at")
    up = _vector(data, "up") if "up" in data else (0.0, 1.0, 0.0)
    fov = data["fov_y_deg"]
    if isinstance(fov, bool) or not isinstance(fov, (int, float)) or not 0.5 <= float(fov) <= 170.0:
        raise CameraFileError(f"fov_y_deg must be a number of degrees between 0.5 and 170; got {fov!r}")
    view = [t - p for p, t in zip(position, target)]
    norm = math.sqrt(sum(x * x for x in view))
    if norm < 1e-9:
        raise CameraFileError("the camera's position and look_at are the same point: it looks nowhere")
    up_norm = math.sqrt(sum(x * x for x in up))
    if up_norm < 1e-9:
        raise CameraFileError("the camera's up vector is zero")
    cos = abs(sum(a * b for a, b in zip(view, up))) / (norm * up_norm)
    if cos > 0.9999:
        raise CameraFileError("the camera's up vector is parallel to its viewing direction: give another 'up'")
    return CameraSpec(position, target, float(fov), up)


def read_camera_file(path: str | Path) -> CameraSpec:
    path = Path(path)
    if not path.is_file():
        raise CameraFileError(f"no camera file at {path}: give a JSON file, or 'front'")
    if path.stat().st_size > MAX_CAMERA_FILE_BYTES:
        raise CameraFileError(f"{path} is too large to be a camera file ({path.stat().st_size} bytes)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CameraFileError(f"{path} is not valid JSON: {exc}") from None
    return parse_camera(data)


def front_camera(camera: CameraConfig, width: int, height: int) -> Cameras:
    """The pipeline's reference camera (the front view of ``generate``)."""
    from ..camera import orbit_cameras
    return orbit_cameras(camera.reference_polar_deg, camera.reference_azimuth_deg, camera.radius, camera.fov_deg,
                         width, height)


def projected_box(vertices: Tensor, camera: Cameras) -> tuple[Tensor, Tensor, Tensor]:
    """Normalised device coordinates of the vertices' image box: (centre (2,), half size (2,), mean depth)."""
    import torch
    w2c = torch.linalg.inv(camera.c2w[0].double())
    p = vertices.double() @ w2c[:3, :3].T + w2c[:3, 3]
    depth = -p[:, 2]
    if bool((depth <= 1e-6).any()):
        raise CameraFileError("part of the mesh is behind the camera or at its centre: move the camera back")
    f = 1.0 / math.tan(float(camera.fov_y[0]) / 2)
    aspect = camera.width / camera.height
    ndc = torch.stack([f * p[:, 0] / depth / aspect, f * p[:, 1] / depth], -1)
    lo, hi = ndc.amin(0), ndc.amax(0)
    return (lo + hi) / 2, (hi - lo) / 2, depth.mean()


def _outline(u: Tensor, v: Tensor, directions: int = 16) -> Tensor:
    """A mask of the points (u, v) that can bound a projection: those not strictly inside the polygon
    of the extreme points in ``directions`` directions. A perspective coordinate is a linear-fractional
    function of the point, so its extremes over a set lie on the set's convex hull; points inside that
    polygon never are, and dropping them keeps the framing exact and fast on big meshes."""
    import torch
    angle = torch.arange(directions, dtype=u.dtype) * (2 * math.pi / directions)
    extreme = torch.argmax(angle.cos()[:, None] * u + angle.sin()[:, None] * v, dim=1)
    corners = torch.unique_consecutive(extreme)
    if corners.numel() > 1 and corners[0] == corners[-1]:
        corners = corners[:-1]
    if corners.numel() < 3:
        return torch.ones_like(u, dtype=torch.bool)
    pu, pv = u[corners], v[corners]
    eu, ev = pu.roll(-1) - pu, pv.roll(-1) - pv  # counter-clockwise edges
    keep = torch.zeros_like(u, dtype=torch.bool)
    for i in range(corners.numel()):
        keep |= eu[i] * (v - pv[i]) - ev[i] * (u - pu[i]) <= 1e-12
    return keep


def _centred_half(along: Tensor, depth: Tensor, k: float, shift: float) -> tuple[float, float]:
    """Centre one image axis: the camera's lateral ``shift`` that puts the NDC extent of points
    at ``along`` (their coordinate on that axis) and ``depth`` symmetric about 0, and the half extent
    there. NDC is ``k * (along - shift) / depth``: each point's is a falling line in the shift, so the
    centre falls monotonically; safeguarded Newton (bisection on a bracket) finds its zero."""
    import torch
    lo, hi = float(along.min()), float(along.max())  # centre >= 0 at shift=lo, <= 0 at shift=hi
    slope = k / depth
    half = 0.0
    for _ in range(100):
        ndc = slope * (along - shift)
        i_max, i_min = int(torch.argmax(ndc)), int(torch.argmin(ndc))
        top, bottom = float(ndc[i_max]), float(ndc[i_min])
        centre, half = (top + bottom) / 2, (top - bottom) / 2
        if abs(centre) <= 1e-12 * max(half, 1e-12):
            break
        if centre > 0:
            lo = shift
        else:
            hi = shift
        step = shift + centre / (float(slope[i_max] + slope[i_min]) / 2)
        shift = step if lo < step < hi else (lo + hi) / 2
        if hi - lo <= 1e-15 * max(1.0, abs(hi)):
            break
    return shift, half


def fit_to_front(norm: Normalisation, vertices: Tensor, camera: Cameras, fill: float,
                 near: float = 0.05) -> tuple[Normalisation, Cameras]:
    """Place the mesh and the front camera so the mesh's silhouette is centred with its long side at
    ``fill`` of the frame (the framing ``generate``'s preprocessing gives the photo, its margin).

    Returns the refined normalisation and the camera to use. The mesh stays centred in the field
    (its box centre at the origin) and only its scale changes; the camera keeps its orientation and
    moves sideways to centre the silhouette. Two regimes, each a one-dimensional monotone solve
    (bisection, so it converges; the old fixed-point loop oscillated for meshes long along the view
    axis):

    * the camera at its orbit radius and the mesh scaled until its silhouette spans ``fill``;
    * when that would take the mesh out of the field's [-1, 1]^3 (a mesh seen end on, whose near
      end comes close to the camera), the largest scale that stays inside, and the camera moved
      along its axis towards the mesh until the silhouette spans ``fill``.

    ``near``: the closest a vertex may come to the camera's plane."""
    import torch

    from ..camera import Cameras
    points = norm.apply(vertices.detach().double())
    centre = (points.amin(0) + points.amax(0)) / 2
    norm = norm.then(1.0, -centre)
    points = points - centre
    c2w = camera.c2w[0].double()
    right, up, back = c2w[:3, 0], c2w[:3, 1], c2w[:3, 2]
    a, b, c = points @ right, points @ up, points @ back
    front = float(c.max())
    x_keep, y_keep = _outline(a, c), _outline(b, c)
    ax, cx_, by, cy_ = a[x_keep], c[x_keep], b[y_keep], c[y_keep]
    f = 1.0 / math.tan(float(camera.fov_y[0]) / 2)
    aspect = camera.width / camera.height
    lateral = [float(c2w[:3, 3] @ right), float(c2w[:3, 3] @ up)]
    orbit = float(c2w[:3, 3] @ back)
    if orbit <= near:
        raise CameraFileError("the front camera sits inside the field: set a camera radius above 1")

    def long_side(scale: float, distance: float) -> float:
        lateral[0], hx = _centred_half(scale * ax, distance - scale * cx_, f / aspect, lateral[0])
        lateral[1], hy = _centred_half(scale * by, distance - scale * cy_, f, lateral[1])
        return max(hx * aspect, hy) / max(aspect, 1.0)

    def solve(fn, lo: float, hi: float, rising: bool) -> float:
        for _ in range(200):  # bisection: fn is monotone in its argument
            mid = (lo + hi) / 2
            if (fn(mid) < fill) == rising:
                lo = mid
            else:
                hi = mid
            if hi - lo <= 1e-13 * hi:
                break
        return (lo + hi) / 2

    inside = 1.0 / float(points.abs().max())  # the largest scale that keeps the mesh in [-1, 1]^3
    limit = inside if front <= 0 else min(inside, (orbit - near) / front)
    if long_side(limit, orbit) >= fill:  # reachable from the orbit: scale the mesh
        scale = solve(lambda s: long_side(s, orbit), 0.0, limit, rising=True)
        distance = orbit
    else:  # seen end on: the largest scale inside the field, and the camera comes closer
        scale = inside
        closest = scale * front + near
        if long_side(scale, closest) < fill:
            raise CameraFileError("the mesh cannot fill the photo's frame from the front: give a camera file")
        distance = solve(lambda d: long_side(scale, d), closest, max(orbit, 2.0 * closest), rising=False)
    long_side(scale, distance)  # leaves ``lateral`` centred for this scale and distance
    moved = c2w.clone()
    moved[:3, 3] = lateral[0] * right + lateral[1] * up + distance * back
    return norm.then(scale, (0.0, 0.0, 0.0)), Cameras(moved[None].to(camera.c2w.dtype), camera.fov_y.clone(),
                                                       camera.width, camera.height)


__all__ = ["CameraFileError", "CameraSpec", "fit_to_front", "front_camera", "look_at_with_up", "parse_camera",
           "projected_box", "read_camera_file"]
