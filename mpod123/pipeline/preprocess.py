"""Input photo -> the centred RGBA reference the stages work from.

Steps, each with an error that says what to supply instead:

1. **Read safely.** PNG, JPEG or WebP, 8 or 16 bits, with or without alpha.
   The header's size is checked before any pixel is decoded, so a
   decompression bomb (a 30000² PNG of a few kB) is refused at once; large
   photos (up to ``max_pixels``) are reduced fast (JPEG DCT scaling, then
   integer box reduction) before the final resample.
2. **Foreground** (``PreprocessConfig.matting``). The alpha channel when there
   is a meaningful one; else a segmentation model (``rembg``) when it is
   installed, whose matte gets a confidence of its own (cropped, several
   pieces, holes, unclear edge: :mod:`.matting`) and is refused below
   ``min_confidence`` too; else, for product photos on a plain background, matting by
   background estimation from the image border (the largest connected object
   is kept), which measures its own confidence (how plain the border is,
   whether the object touches it, how compact and clear-cut the foreground is)
   and refuses below ``min_confidence`` rather than guess; else an error.
   Matting runs on a copy reduced to ``work_side``; its alpha is upsampled.
3. **Frame.** The object's bounding box is centred and scaled so that its
   longer side fills ``1 - 2 * border_ratio`` of a square of ``size`` pixels
   (Zero123's inputs leave such a margin), composited on white. The crop is
   taken from the photo read at up to ``source_side``, so a 1024 reference
   keeps the photo's detail; each consumer downsamples it to its own size.

The processed input and its mask are written next to the outputs by the
runner, so a user can see what the model was given.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..config import PreprocessConfig
from ..imaging.images import to_uint8
from ..runtime.errors import Mpod123Error
from .matting import REASONS, connected_components, fill_small_holes, largest_component, model_matte_confidence


class InputImageError(Mpod123Error, ValueError):
    """An input image that cannot be used; the message says what to supply instead."""


@dataclass
class Preprocessed:
    rgba: np.ndarray
    """(size, size, 4) float32 in [0, 1], straight alpha, the object centred."""
    method: str
    """How the foreground was found: alpha, plain-background, rembg."""
    source_size: tuple[int, int]
    """(width, height) of the file as given."""
    bbox: tuple[int, int, int, int]
    """(left, top, right, bottom) of the object in the image as read (at most ``source_side``)."""
    confidence: float = 1.0
    """How sure the matting is, 0..1 (1 for a real alpha channel)."""
    details: dict = field(default_factory=dict)
    """The matting's measurements behind ``confidence``."""
    matte: np.ndarray | None = None
    """(H, W) alpha at the size the image was read at (``source_side`` at most)."""

    @property
    def rgb_on_white(self) -> np.ndarray:
        a = self.rgba[..., 3:]
        return self.rgba[..., :3] * a + (1.0 - a)

    @property
    def mask(self) -> np.ndarray:
        return self.rgba[..., 3] >= 0.5

    def save(self, folder: str | Path) -> tuple[Path, Path]:
        """Write ``input.png`` (RGBA) and ``mask.png`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(to_uint8(self.rgba), "RGBA").save(folder / "input.png")
        Image.fromarray(to_uint8(self.rgba[..., 3]), "L").save(folder / "mask.png")
        return folder / "input.png", folder / "mask.png"

    def save_matte(self, path: str | Path) -> Path:
        """Write the alpha at the photo's own size (``source_size``) as an 8-bit PNG."""
        path = Path(path)
        matte = self.matte if self.matte is not None else self.rgba[..., 3]
        image = Image.fromarray(to_uint8(matte), "L")
        if image.size != tuple(self.source_size):
            image = image.resize(tuple(self.source_size), Image.Resampling.BILINEAR)
        image.save(path)
        return path


# ------------------------------------------------------------------ reading
def _open(source: str | Path | bytes) -> Image.Image:
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise InputImageError("the image is empty (0 bytes); send a PNG, JPEG or WebP file")
        data, name = bytes(source), "the image"
    else:
        path = Path(source)
        if not path.is_file():
            raise InputImageError(f"no image file at {path}")
        data, name = path.read_bytes(), str(path)
        if not data:
            raise InputImageError(f"{name} is empty (0 bytes); give a PNG, JPEG or WebP file")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InputImageError(f"{name} is not an image Pillow can read; give a PNG, JPEG or WebP file") from None
    except Image.DecompressionBombError as exc:
        raise InputImageError(
            f"{name} is too large to decode safely ({exc}). Downscale it (a 2000 px side is plenty) and try again"
        ) from None
    if image.format not in ("PNG", "JPEG", "WEBP", "MPO"):
        raise InputImageError(f"{name} is a {image.format} image; give a PNG, JPEG or WebP file")
    return image


def read_image(source: str | Path | bytes, cfg: PreprocessConfig | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """(H, W, 3 or 4) float32 in [0, 1], reduced to about ``cfg.source_side``, and the original (width, height)."""
    cfg = cfg or PreprocessConfig()
    image = _open(source)
    width, height = image.size
    if width * height > cfg.max_pixels or width <= 0 or height <= 0:
        raise InputImageError(
            f"the image is {width}x{height} ({width * height / 1e6:.0f} MP); the limit is {cfg.max_pixels / 1e6:.0f} MP. "
            "Downscale it (a 2000 px side is plenty) and try again"
        )
    side = cfg.source_side
    scale = side / max(width, height)
    try:
        if scale < 1.0 and image.format == "JPEG":
            image.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))  # DCT scaling, very fast
        image = ImageOps.exif_transpose(image)
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputImageError(f"the image is corrupt or truncated ({exc}); re-export it and try again") from None
    image = _to_8bit_rgb_or_rgba(image)
    factor = int(max(image.size) / side)
    if factor >= 2:
        image = image.reduce(factor)
    if max(image.size) > side:
        s = side / max(image.size)
        image = image.resize((max(1, round(image.width * s)), max(1, round(image.height * s))), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.float32) / 255.0, (width, height)


def _to_8bit_rgb_or_rgba(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB or RGBA with 8 bits per channel (16-bit greyscale scaled, palette
    transparency kept)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode != "I" or arr.max() > 255 else 255.0
        return Image.fromarray((np.clip(arr / peak, 0, 1) * 255 + 0.5).astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        return Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8), "L").convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)
    return image.convert("RGBA" if has_alpha else "RGB")


# --------------------------------------------------------------- foreground
def _border(rgb: np.ndarray, width: int) -> np.ndarray:
    return np.concatenate(
        [rgb[:width].reshape(-1, 3), rgb[-width:].reshape(-1, 3), rgb[:, :width].reshape(-1, 3), rgb[:, -width:].reshape(-1, 3)]
    )


def plain_background_alpha(rgb: np.ndarray, cfg: PreprocessConfig) -> np.ndarray | None:
    """Soft alpha from the distance to the border's colour, or None when the border is not plain."""
    found = plain_background_matte(rgb, cfg)
    return None if found is None else found[0]


def matting_confidence(
    dist: np.ndarray, core: np.ndarray, spread: float, tol: float, cfg: PreprocessConfig
) -> tuple[float, dict[str, float]]:
    """How far to trust a plain-background matte, 0..1, and the measurements behind it.

    The weakest of five scores, each 1 for a product shot on a backdrop and falling to 0 at a
    level seen on photos with a natural background:

    - ``border``: how uniform the border is (``spread`` against ``border_max_spread``, squared);
    - ``contact``: how little of the outermost ring of pixels the object covers (a background
      region matted as object touches the border; 5% of the ring scores 0);
    - ``fill``: the object must not fill the frame (above 80% of the image scores 0);
    - ``compact``: the kept object holds most foreground pixels (clutter leaves many pieces);
    - ``clear``: few background pixels that are not clearly background (beyond half the
      tolerance), per pixel of the object's edge: an antialiased cut leaves one or two, a
      textured, blurred or shaded background many more.
    """
    h, w = core.shape
    ring = np.concatenate([core[0], core[-1], core[:, 0], core[:, -1]])
    area = max(1, int(core.sum()))
    fg = dist > tol
    inner = core.copy()  # erode by one pixel: the object's edge is core minus its interior
    inner[1:] &= core[:-1]
    inner[:-1] &= core[1:]
    inner[:, 1:] &= core[:, :-1]
    inner[:, :-1] &= core[:, 1:]
    edge = max(1, int((core & ~inner).sum()))
    band = int((~core & (dist > 0.5 * tol)).sum())  # background pixels that are not clearly background
    details = {
        "border_spread": float(spread),
        "border_contact": float(ring.mean()),
        "object_fraction": float(area / (h * w)),
        "kept_fraction": float(area / max(1, int(fg.sum()))),
        "unclear_per_edge_pixel": float(band / edge),
    }
    scores = {
        "border": 1.0 - (spread / cfg.border_max_spread) ** 2,
        "contact": 1.0 - details["border_contact"] / 0.05,
        "fill": (0.8 - details["object_fraction"]) / 0.2,
        "compact": (details["kept_fraction"] - 0.6) / 0.3,
        "clear": 1.0 - (details["unclear_per_edge_pixel"] - 2.0) / 6.0,
    }
    scores = {k: float(np.clip(v, 0.0, 1.0)) for k, v in scores.items()}
    details.update({f"score_{k}": v for k, v in scores.items()})
    return min(scores.values()), details


def plain_background_matte(rgb: np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, float, dict] | None:
    """(soft alpha, confidence, details) from the distance to the border's colour, or None when the
    border is not plain at all."""
    border = _border(rgb, max(2, min(rgb.shape[:2]) // 64))
    colour = np.median(border, axis=0)
    spread = float(np.abs(border - colour).mean())
    if spread > cfg.border_max_spread:
        return None
    dist = np.sqrt(((rgb - colour) ** 2).sum(-1) / 3.0)
    tol = max(cfg.background_tolerance, 3.0 * spread)
    core = fill_small_holes(largest_component(dist > tol))
    soft = np.clip((dist - 0.5 * tol) / (0.5 * tol), 0.0, 1.0)
    # soft edges only next to the kept object: grow the core by one pixel
    grown = core.copy()
    grown[1:] |= core[:-1]
    grown[:-1] |= core[1:]
    grown[:, 1:] |= core[:, :-1]
    grown[:, :-1] |= core[:, 1:]
    alpha = np.where(core, 1.0, np.where(grown, soft, 0.0)).astype(np.float32)
    confidence, details = matting_confidence(dist, core, spread, tol, cfg)
    return alpha, confidence, details


def _rembg_alpha(rgb: np.ndarray) -> np.ndarray | None:
    try:
        import rembg  # optional extra
    except ImportError:
        return None
    out = rembg.remove(Image.fromarray(to_uint8(rgb), "RGB"))
    return np.asarray(out.convert("RGBA"), dtype=np.float32)[..., 3] / 255.0


@dataclass
class Matte:
    """The foreground found in an image, how, and how sure."""

    alpha: np.ndarray
    """(H, W) in [0, 1] at the image's size."""
    method: str
    """alpha, rembg or plain-background."""
    confidence: float
    details: dict = field(default_factory=dict)


FIX_IT = (
    "give a PNG with an alpha channel (a cut-out), a photo on a plain background, "
    "or install the background remover (pip install rembg)"
)


def _at_work_size(rgb: np.ndarray, side: int) -> np.ndarray:
    if max(rgb.shape[:2]) <= side:
        return rgb
    s = side / max(rgb.shape[:2])
    size = (max(1, round(rgb.shape[1] * s)), max(1, round(rgb.shape[0] * s)))
    return np.asarray(Image.fromarray(to_uint8(rgb), "RGB").resize(size, Image.Resampling.BOX), np.float32) / 255.0


def _upsample_alpha(alpha: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if alpha.shape == shape:
        return alpha
    img = Image.fromarray(alpha.astype(np.float32), "F").resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(img, np.float32), 0.0, 1.0)


def find_foreground(image: np.ndarray, cfg: PreprocessConfig) -> Matte:
    """The foreground of an RGB or RGBA image, by ``cfg.matting`` (see the module docstring)."""
    mode = cfg.matting
    if mode not in ("auto", "alpha", "plain", "model"):
        raise InputImageError(f"unknown matting {mode!r}: choose auto, alpha, plain or model")
    if image.shape[-1] == 4 and mode in ("auto", "alpha"):
        alpha = image[..., 3]
        if (alpha < 0.5).mean() > 0.01:  # a real cut-out, not an opaque alpha channel
            return Matte(alpha, "alpha", 1.0)
        if (alpha >= 0.5).mean() < cfg.min_object_fraction:
            raise InputImageError("the image's alpha channel is empty: nothing is marked as the object")
    if mode == "alpha":
        raise InputImageError("--matting alpha needs an image with a transparent background; " + FIX_IT)
    rgb = image[..., :3]
    small = _at_work_size(rgb, cfg.work_side)
    if mode in ("auto", "model"):
        alpha = _rembg_alpha(small)
        if alpha is not None:
            matte = model_matte(alpha, cfg, refuse=mode == "auto")
            return Matte(_upsample_alpha(alpha, rgb.shape[:2]), matte.method, matte.confidence, matte.details)
        if mode == "model":
            raise InputImageError(
                "--matting model needs the background remover: pip install rembg (or 'mpod123[matting]')"
            )
    found = plain_background_matte(small, cfg)
    if found is None:
        raise InputImageError(
            "cannot separate the object from its background (the border is not a plain colour): " + FIX_IT
        )
    alpha, confidence, details = found
    if mode == "auto" and confidence < cfg.min_confidence:
        _refuse("plain-background", confidence, details, cfg, "plain")
    return Matte(_upsample_alpha(alpha, rgb.shape[:2]), "plain-background", confidence, details)


def _refuse(method: str, confidence: float, details: dict, cfg: PreprocessConfig, force: str) -> None:
    weakest = min((k for k in details if k.startswith("score_")), key=details.get)[6:]
    raise InputImageError(
        f"{method} matting is not confident here ({confidence:.2f} < {cfg.min_confidence}: {REASONS[weakest]}); "
        + FIX_IT + f". To use it anyway, force it (--matting {force}) and check matte.png"
    )


def model_matte(alpha: np.ndarray, cfg: PreprocessConfig, refuse: bool = False) -> Matte:
    """A segmentation model's matte (H, W) with its confidence (:func:`.matting.model_matte_confidence`);
    with ``refuse``, below ``cfg.min_confidence`` it is refused as a plain-background matte is."""
    confidence, details = model_matte_confidence(alpha, cfg)
    if refuse and confidence < cfg.min_confidence:
        _refuse("model", confidence, details, cfg, "model")
    return Matte(alpha, "rembg", confidence, details)


def foreground(image: np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, str]:
    """(alpha (H, W) in [0, 1], method) for an RGB or RGBA image (see :func:`find_foreground`)."""
    matte = find_foreground(image, cfg)
    return matte.alpha, matte.method


# -------------------------------------------------------------------- frame
def frame(
    image: np.ndarray, alpha: np.ndarray, cfg: PreprocessConfig, scale: float | None = None
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Centre the object's bounding box in a ``cfg.size`` square with the configured margin.

    ``scale`` (framed pixels per pixel of ``image``) replaces the margin's: extra views are framed
    at the main photo's scale (:mod:`mpod123.pipeline.extra_views`)."""
    on = alpha >= 0.5
    if on.mean() < cfg.min_object_fraction:
        raise InputImageError(
            "no object found: the image looks like background only (or the object is tiny); "
            "crop closer to the object or give a cut-out with alpha"
        )
    ys, xs = np.nonzero(on)
    left, top, right, bottom = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    rgba = np.concatenate([image[..., :3], alpha[..., None]], axis=-1)
    crop = rgba[top:bottom, left:right]
    side = max(1, round(cfg.size * (1.0 - 2.0 * cfg.border_ratio)))
    s = side / max(crop.shape[:2]) if scale is None else scale
    w, h = max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s))
    # premultiply so the resample does not bleed background colour into the edges
    premul = crop.copy()
    premul[..., :3] *= premul[..., 3:]
    channels = [
        np.asarray(Image.fromarray(premul[..., c]).resize((w, h), Image.Resampling.LANCZOS), dtype=np.float32)
        for c in range(4)
    ]
    small = np.clip(np.stack(channels, -1), 0.0, 1.0)
    small[..., :3] = np.where(small[..., 3:] > 1e-4, small[..., :3] / np.maximum(small[..., 3:], 1e-4), 1.0)
    out = np.zeros((cfg.size, cfg.size, 4), dtype=np.float32)
    out[..., :3] = 1.0
    y0, x0 = (cfg.size - h) // 2, (cfg.size - w) // 2
    out[y0 : y0 + h, x0 : x0 + w] = np.clip(small, 0.0, 1.0)
    return out, (left, top, right, bottom)


def preprocess(source: str | Path | bytes, cfg: PreprocessConfig | None = None) -> Preprocessed:
    """Read, find the foreground, and frame: the reference image the pipeline starts from."""
    cfg = cfg or PreprocessConfig()
    image, size = read_image(source, cfg)
    matte = find_foreground(image, cfg)
    rgba, bbox = frame(image, matte.alpha, cfg)
    return Preprocessed(rgba, matte.method, size, bbox, matte.confidence, matte.details, matte.alpha)


__all__ = [
    "InputImageError",
    "PreprocessConfig",
    "Preprocessed",
    "connected_components",
    "Matte",
    "find_foreground",
    "foreground",
    "matting_confidence",
    "model_matte",
    "plain_background_alpha",
    "plain_background_matte",
    "preprocess",
    "read_image",
]
