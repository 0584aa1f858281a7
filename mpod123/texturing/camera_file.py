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
is then placed so that its front silhouette is centred and framed the same way.
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


def fit_to_front(norm: Normalisation, vertices: Tensor, camera: Cameras, fill: float, iterations: int = 6) -> Normalisation:
    """Refine ``norm`` so the mesh's silhouette from ``camera`` is centred with its long side at ``fill``
    of the frame: the framing ``generate``'s preprocessing gives the photo (its margin)."""
    import torch
    c2w = camera.c2w[0].double()
    right, up = c2w[:3, 0], c2w[:3, 1]
    f = 1.0 / math.tan(float(camera.fov_y[0]) / 2)
    aspect = camera.width / camera.height
    for _ in range(iterations):
        centre, half, depth = projected_box(norm.apply(vertices.double()), camera)
        long_side = float(torch.maximum(half[0] * aspect, half[1])) / max(aspect, 1.0)
        scale = fill / max(long_side, 1e-9)
        shift = -(centre[0] * aspect * right + centre[1] * up) * depth / f
        norm = norm.then(1.0, shift).then(scale, (0.0, 0.0, 0.0))
    return norm


__all__ = ["CameraFileError", "CameraSpec", "fit_to_front", "front_camera", "look_at_with_up", "parse_camera",
           "projected_box", "read_camera_file"]
