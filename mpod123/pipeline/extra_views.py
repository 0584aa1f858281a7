"""Extra photos of the object with known angles: ``generate photo.png --view back.png@180 --view left.png@90,80``.

**Convention.** Angles are in degrees, in the orbit convention of
:mod:`mpod123.camera.cameras`, relative to the main photo: the main photo is
azimuth 0 at the configured reference polar (90, level). The azimuth turns the
camera from the object's front (+Z) towards +X, counter-clockwise seen from
above: 90 is a photo taken from the object's *left* side (the side on the right
of the main photo), 180 from behind, 270 (or -90) from its right. The optional
polar angle is measured from straight above (+Y): 90 is level with the object,
less looks down on it (80: 10 degrees above), more looks up. Every extra camera
has the reference camera's distance and field of view.

**Framing.** A view's image only means something together with its camera:
the framed main photo says "the object, seen from the reference camera (radius
2.5, fov 40), looks like this", which fixes the object's size in the world. An
extra view must agree on that size, so by default (``preprocess.view_framing =
"shared"``) each extra photo is framed at the main photo's scale, measured per
the photo's longer side (the same camera at the same distance, as a turntable,
a rig or a multi-view render gives), and centred on its own object's box. For
views around the vertical axis that centring is consistent: the box centres of
orthographic front, side and back silhouettes are the projections of one 3D
box centre, which becomes the origin. Framing each view on its own
(``"independent"``: its longer side at the main photo's margin) would tell each
camera a different object size whenever the object is longer one way than the
other (a shoe from the side vs the front); it is offered for photos taken from
unknown distances. A view whose object would not fit the frame at the shared
scale is refused with that advice.

**Weighting.** Every view is a :class:`~mpod123.stages.base.ReferenceView`. The
stages keep their reference schedule (``reference_view_prob`` of the steps) and
each reference step shows one view, round-robin (main, extra 1, extra 2, main,
...), with the same colour and mask losses and weights: the views share the
schedule equally, the reference-vs-prior balance is unchanged and a step costs
the same whatever the number of views. In stage 2, ``detail.extra_view_novel_share``
of the novel views are placed at an extra view's camera
(:meth:`~mpod123.stages.detail.DetailStage.place_extra_view_cameras`), where the stage-1 mask
of that camera is the L_nvm target and the MRCA mask. Textual inversion's
augmentation pool is split evenly across the views. Zero-1-to-3 stays
conditioned on the main photo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..camera import Cameras, orbit_cameras
from ..config import PipelineConfig, PreprocessConfig
from ..runtime.errors import Mpod123Error
from .preprocess import InputImageError, Preprocessed, find_foreground, frame, read_image
from ..stages.base import ReferenceView

MAX_VIEWS = 8
"""Extra views per run (the backend's limit too)."""
MAX_FILL = 0.98
"""At the shared scale, an extra view's object may span at most this fraction of the frame."""


class ViewSpecError(Mpod123Error, ValueError):
    """An extra view that cannot be used; the message says what to give instead."""


@dataclass(frozen=True)
class ViewSpec:
    """One extra photo and where it was taken from (degrees, relative to the main photo)."""

    image: str | Path | bytes
    azimuth_deg: float
    polar_deg: float | None = None
    """None: the main photo's polar (``outline.camera.reference_polar_deg``)."""

    @property
    def label(self) -> str:
        return "<bytes>" if isinstance(self.image, (bytes, bytearray)) else str(self.image)

    def describe(self) -> dict[str, Any]:
        return {"image": self.label, "azimuth_deg": self.azimuth_deg, "polar_deg": self.polar_deg}


def check_angles(azimuth: Any, polar: Any, what: str = "the view") -> tuple[float, float | None]:
    """Finite numbers in range, as floats: azimuth in [-360, 360], polar in (0, 180) or None."""
    out = []
    for name, value, optional in (("azimuth", azimuth, False), ("polar", polar, True)):
        if value is None and optional:
            out.append(None)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ViewSpecError(f"{what}: the {name} must be a number of degrees, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ViewSpecError(f"{what}: the {name} {value!r} is not a number of degrees") from None
        if not math.isfinite(number):
            raise ViewSpecError(f"{what}: the {name} must be a finite number of degrees, got {value!r}")
        out.append(number)
    az, po = out
    if not -360.0 <= az <= 360.0:
        raise ViewSpecError(f"{what}: azimuth {az:g} is out of range; give degrees in [-360, 360] (90 = the object's left)")
    if po is not None and not 0.0 < po < 180.0:
        raise ViewSpecError(f"{what}: polar {po:g} is out of range; give degrees in (0, 180) from straight above (90 = level)")
    return az, po


def parse_view_spec(text: str) -> ViewSpec:
    """``IMAGE@AZIMUTH[,POLAR]`` (degrees) -> ViewSpec; the file must exist."""
    if "@" not in text:
        raise ViewSpecError(f"--view {text!r}: give IMAGE@AZIMUTH[,POLAR] in degrees, e.g. back.png@180 or left.png@90,80")
    path, _, angles = text.rpartition("@")
    if not path:
        raise ViewSpecError(f"--view {text!r}: the image file is missing before '@'")
    parts = angles.split(",")
    if len(parts) > 2 or not all(p.strip() for p in parts):
        raise ViewSpecError(f"--view {text!r}: after '@' give AZIMUTH or AZIMUTH,POLAR in degrees, e.g. @90 or @90,80")
    az, po = check_angles(parts[0].strip(), parts[1].strip() if len(parts) == 2 else None, f"--view {text!r}")
    if not Path(path).is_file():
        raise ViewSpecError(f"--view {text!r}: no image file at {path}")
    return ViewSpec(path, az, po)


def parse_view_specs(texts: list[str] | tuple[str, ...]) -> list[ViewSpec]:
    specs = [parse_view_spec(t) for t in texts]
    if len(specs) > MAX_VIEWS:
        raise ViewSpecError(f"{len(specs)} extra views given; at most {MAX_VIEWS} are supported")
    return specs


def views_fingerprint(specs: list[ViewSpec]) -> str | None:
    """sha256 over every view's image bytes and angles (None without views): a resumed run must have
    the same extra views as the checkpoints it continues."""
    if not specs:
        return None
    import hashlib

    digest = hashlib.sha256()
    for spec in specs:
        data = bytes(spec.image) if isinstance(spec.image, (bytes, bytearray)) else Path(spec.image).read_bytes()
        digest.update(hashlib.sha256(data).digest())
        digest.update(f"{spec.azimuth_deg!r},{spec.polar_deg!r};".encode())
    return digest.hexdigest()


# ------------------------------------------------------------------ cameras
def view_camera(spec: ViewSpec, cfg: PipelineConfig, width: int, height: int) -> Cameras:
    """The extra view's camera: the reference camera's radius and fov at the view's angles."""
    cam = cfg.outline.camera
    polar = cam.reference_polar_deg if spec.polar_deg is None else spec.polar_deg
    return orbit_cameras(polar, cam.reference_azimuth_deg + spec.azimuth_deg, cam.radius, cam.fov_deg, width, height)


# ------------------------------------------------------------------ framing
def main_scale(main: Preprocessed, cfg: PreprocessConfig) -> float:
    """Framed pixels per unit of the photo's longer side that the main photo was framed at."""
    if main.matte is None:
        raise ValueError("the main photo's matte is needed to frame extra views at its scale")
    left, top, right, bottom = main.bbox
    side = cfg.size * (1.0 - 2.0 * cfg.border_ratio)
    return side * max(main.matte.shape[:2]) / max(right - left, bottom - top)


def preprocess_view(spec: ViewSpec, cfg: PreprocessConfig, scale: float | None) -> Preprocessed:
    """Read, matte and frame an extra photo like the main one; ``scale`` from :func:`main_scale`
    (None: framed on its own, ``view_framing = "independent"``)."""
    try:
        image, size = read_image(spec.image, cfg)
        matte = find_foreground(image, cfg)
        pixel_scale = None
        if scale is not None:
            on = matte.alpha >= 0.5
            if on.any():
                ys, xs = np.nonzero(on)
                extent = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
                pixel_scale = scale / max(image.shape[:2])
                fill = extent * pixel_scale / cfg.size
                if fill > MAX_FILL:
                    raise ViewSpecError(
                        f"the object spans {fill:.0%} of the frame at the main photo's scale: was it taken closer "
                        "than the main photo? Take it from the same distance, or frame each view on its own "
                        "(--set preprocess.view_framing=independent)"
                    )
        rgba, bbox = frame(image, matte.alpha, cfg, scale=pixel_scale)
    except (InputImageError, ViewSpecError) as exc:
        raise ViewSpecError(f"extra view {spec.label}: {exc}") from None
    return Preprocessed(rgba, matte.method, size, bbox, matte.confidence, matte.details, matte.alpha)


def reference_views(specs: list[ViewSpec], main: Preprocessed, cfg: PipelineConfig) -> list[tuple[ViewSpec, Preprocessed, ReferenceView]]:
    """Each extra view preprocessed (framing per ``cfg.preprocess.view_framing``) with its camera."""
    if len(specs) > MAX_VIEWS:
        raise ViewSpecError(f"{len(specs)} extra views given; at most {MAX_VIEWS} are supported")
    framing = cfg.preprocess.view_framing
    if framing not in ("shared", "independent"):
        raise ValueError(f"preprocess.view_framing must be shared or independent, got {framing!r}")
    scale = main_scale(main, cfg.preprocess) if framing == "shared" else None
    out = []
    for spec in specs:
        pre = preprocess_view(spec, cfg.preprocess, scale)
        h, w = pre.rgba.shape[:2]
        out.append((spec, pre, ReferenceView(torch.from_numpy(pre.rgba), view_camera(spec, cfg, w, h))))
    return out


def save_views(folder: Path, views: list[tuple[ViewSpec, Preprocessed, ReferenceView]]) -> list[dict[str, Any]]:
    """Write ``view_<i>.png`` (the framed RGBA) into the work folder; the run record's entries."""
    from PIL import Image

    from ..imaging.images import to_uint8

    records = []
    for i, (spec, pre, ref) in enumerate(views, start=1):
        name = f"view_{i}.png"
        Image.fromarray(to_uint8(pre.rgba), "RGBA").save(folder / name)
        cam = ref.camera
        records.append({**spec.describe(), "file": name, "method": pre.method, "confidence": round(pre.confidence, 3),
                        "camera_polar_deg": round(float(torch.rad2deg(cam.polar[0])), 4),
                        "camera_azimuth_deg": round(float(torch.rad2deg(cam.azimuth[0])), 4)})
    return records


# --------------------------------------------------------- textual inversion
@torch.no_grad()
def encode_view_pool(ti: Any, images: list[Tensor], chunk: int = 8) -> Tensor:
    """Textual inversion's augmentation pool over every view: ``cfg.augmentations`` split evenly
    (at least one each), each view augmented as the single-photo pool is, encoded once by the same VAE
    (``ti.encoding_vae()``: a float32 copy when fp16 models' VAE config sets ``force_upcast``)."""
    from ..guidance import resize_rgba
    from ..guidance.textual_inversion import augment

    cfg, models = ti.cfg, ti.models
    size = cfg.resolution or models.native_size
    n = len(images)
    counts = [max(1, cfg.augmentations // n + (1 if i < cfg.augmentations % n else 0)) for i in range(n)]
    views = []
    for i, (rgba, count) in enumerate(zip(images, counts)):
        gen = torch.Generator().manual_seed(cfg.seed + 7919 * i)
        ref = rgba.float()
        if max(ref.shape[:2]) > size:
            ref = resize_rgba(ref[None], size, size)[0]
        views.append(augment(ref, count, size, gen))
    stack = torch.cat(views)
    vae, dtype = ti.encoding_vae()  # the single-photo pool's VAE: float32 under the config's force_upcast
    out = []
    for start in range(0, len(stack), chunk):
        x = stack[start : start + chunk].permute(0, 3, 1, 2).to(models.device, dtype)
        out.append(vae.encode(x * 2.0 - 1.0).latent_dist.mode() * vae.config.scaling_factor)
    ti.latent_pool = torch.cat(out).float()
    return ti.latent_pool


__all__ = [
    "MAX_VIEWS",
    "ViewSpec",
    "ViewSpecError",
    "check_angles",
    "encode_view_pool",
    "main_scale",
    "parse_view_spec",
    "parse_view_specs",
    "preprocess_view",
    "reference_views",
    "save_views",
    "view_camera",
    "views_fingerprint",
]
