"""Score one result against its input: turntable, metrics, ``metrics.json`` and a contact sheet.

The reference-view proxies (PSNR, SSIM, mask IoU of view 0 against the input)
need no weights and are always computed. CLIP, MVC (CLIP backbone) and CX
(VGG19) need weights; when those are missing the metrics are reported as
unavailable, with the reason, and the run still succeeds.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..imaging.images import grid_image, png_bytes
from ..imaging.metrics import mask_from_alpha, psnr, silhouette_iou, ssim
from ..runtime.devices import resolve_device
from .config import EvalConfig, EvalInputError, WeightsUnavailable
from .alignment import align_to_reference
from .turntable import Turntable, render_turntable, turntable_cameras

METRIC_KEYS = ("cx", "clip", "mvc", "psnr", "ssim", "iou")
"""The columns of the paper's table and the reference-view proxies, in report order."""

DEFINITIONS = {
    "cx": "-log CX (Mechrez et al.) of VGG19 relu5_4 features, h = bandwidth, each novel view against the "
    "reference, averaged over views 1..N-1 (lower is better)",
    "clip": "mean cosine similarity of the CLIP image embeddings of novel views 1..N-1 to the reference's",
    "mvc": "OUR definition (the paper gives none): mean CLIP cosine similarity of views adjacent in azimuth, "
    "view N-1 paired with view 0 (N pairs); it depends on N",
    "psnr": "PSNR in dB of view 0 (the reference camera) against the input on white, whole image",
    "ssim": "SSIM (Gaussian window 11, sigma 1.5, valid positions) of view 0 against the input on white",
    "iou": "IoU of view 0's silhouette (antialiased opacity >= 0.5) with the input's alpha >= 0.5",
}


@dataclass
class EvalModels:
    """The networks the learned metrics need, or why each is missing (shared across a set)."""

    clip: object | None = None
    """A :class:`~mpod123.evaluation.clip_score.ClipEmbedder`."""
    vgg: torch.nn.Module | None = None
    clip_name: str = ""
    vgg_name: str = ""
    unavailable: dict[str, str] = field(default_factory=dict)
    """metric name -> reason."""


def load_models(cfg: EvalConfig, device: torch.device) -> EvalModels:
    """Load CLIP and VGG19 once; a missing one is recorded, not raised."""
    from .clip_score import ClipEmbedder
    from .vgg import default_vgg_path, load_vgg19

    models = EvalModels(clip_name=cfg.clip_model)
    try:
        models.clip = ClipEmbedder(cfg.clip_model, device)
    except WeightsUnavailable as exc:
        models.unavailable["clip"] = models.unavailable["mvc"] = str(exc)
    vgg_file = cfg.vgg_weights or str(default_vgg_path())
    models.vgg_name = f"vgg19 relu5_4 ({Path(vgg_file).name})"
    try:
        models.vgg = load_vgg19(cfg.vgg_weights, device)
    except WeightsUnavailable as exc:
        models.unavailable["cx"] = str(exc)
    return models


def load_reference(path: str | Path, cfg: EvalConfig) -> np.ndarray:
    """The input as the reference camera sees it: (R, R, 4) float32, straight alpha.

    With ``cfg.frame_reference`` it goes through the pipeline's own preprocessing
    (foreground, then the object centred with Zero123's margin) at the render
    resolution; otherwise it is taken as it is (it must be square) and resized.
    """
    from ..config import PreprocessConfig
    from ..pipeline.preprocess import InputImageError, preprocess, read_image

    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"no reference image at {path}: pass the input image given to generate")
    pre_cfg = PreprocessConfig(size=cfg.resolution, work_side=max(768, cfg.resolution))
    try:
        if cfg.frame_reference:
            return preprocess(path, pre_cfg).rgba.astype(np.float32)
        image, _ = read_image(path, pre_cfg)
    except InputImageError as exc:
        raise EvalInputError(f"reference {path}: {exc}") from None
    if image.shape[0] != image.shape[1]:
        raise EvalInputError(f"reference {path} is {image.shape[1]}x{image.shape[0]}; an unframed reference must be square")
    if image.shape[-1] == 3:
        image = np.concatenate([image, np.ones_like(image[..., :1])], axis=-1)
    if image.shape[0] != cfg.resolution:
        premul = image.copy()
        premul[..., :3] *= premul[..., 3:]
        chans = [
            np.asarray(Image.fromarray(premul[..., c]).resize((cfg.resolution,) * 2, Image.Resampling.LANCZOS))
            for c in range(4)
        ]
        small = np.clip(np.stack(chans, -1), 0, 1).astype(np.float32)
        a = small[..., 3:]
        small[..., :3] = np.where(a > 1e-4, small[..., :3] / np.maximum(a, 1e-4), 1.0)
        image = np.clip(small, 0, 1)
    return image.astype(np.float32)


def on_white(rgba: np.ndarray) -> np.ndarray:
    a = rgba[..., 3:]
    return rgba[..., :3] * a + (1.0 - a)


@dataclass
class EvalReport:
    metrics: dict
    """Everything ``metrics.json`` holds."""
    turntable: Turntable
    reference: np.ndarray
    """(R, R, 4) the framed input."""

    def value(self, key: str) -> float | None:
        return self.metrics["metrics"].get(key)


def _clean(x: float) -> float | None:
    """JSON has no NaN or infinity: an infinite PSNR (identical images) is written as null with a note."""
    return float(x) if np.isfinite(x) else None


def evaluate(
    result: str | Path,
    reference: str | Path,
    cfg: EvalConfig | None = None,
    models: EvalModels | None = None,
) -> EvalReport:
    """Render ``result`` (a GLB) as a turntable and score it against ``reference`` (the input image)."""
    from .clip_score import clip_score, multiview_consistency
    from .contextual import contextual_score
    from .textured_mesh import load_glb

    cfg = cfg or EvalConfig()
    device = resolve_device(cfg.device)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    mesh = load_glb(result)
    ref_rgba = load_reference(reference, cfg)
    t_align = time.perf_counter()
    alignment, align_notes = _align(mesh, ref_rgba, cfg)
    timings["align_s"] = time.perf_counter() - t_align
    turntable = render_turntable(mesh, cfg, device)
    timings["render_s"] = time.perf_counter() - t0
    models = models if models is not None else load_models(cfg, device)

    ref = torch.from_numpy(on_white(ref_rgba)).to(device)
    view0 = turntable.reference_view
    values: dict[str, float | None] = {k: None for k in METRIC_KEYS}
    per_view: dict[str, list] = {}
    notes: list[str] = list(align_notes)
    t1 = time.perf_counter()
    p = psnr(view0, ref)
    values["psnr"] = _clean(p)
    if not np.isfinite(p):
        notes.append("psnr is null because view 0 equals the reference exactly (infinite PSNR)")
    values["ssim"] = ssim(view0, ref)
    values["iou"] = silhouette_iou(
        mask_from_alpha(turntable.opacity[0]), mask_from_alpha(torch.from_numpy(ref_rgba[..., 3]).to(device))
    )
    timings["proxies_s"] = time.perf_counter() - t1

    if models.clip is not None:
        t2 = time.perf_counter()
        emb = models.clip.embed(torch.cat([ref[None], turntable.rgb]))
        values["clip"], per_view["clip"] = clip_score(emb[2:], emb[0])
        values["mvc"], per_view["mvc_pairs"] = multiview_consistency(emb[1:])
        per_view["clip_view0"] = float(emb[1] @ emb[0])
        timings["clip_s"] = time.perf_counter() - t2
    if models.vgg is not None:
        t3 = time.perf_counter()
        with torch.no_grad():
            ref_feat = models.vgg(ref[None].float())[0]
            cx = [
                contextual_score(models.vgg(view[None].float())[0], ref_feat, cfg.cx_bandwidth)
                for view in turntable.novel_views
            ]
        values["cx"] = float(np.mean(cx))
        per_view["cx"] = cx
        timings["cx_s"] = time.perf_counter() - t3

    metrics = {
        "result": str(result),
        "reference": str(reference),
        "metrics": values,
        "views": cfg.views,
        "resolution": cfg.resolution,
        "novel_views": cfg.views - 1,
        "azimuth_deg": turntable.azimuth_deg,
        "textured": turntable.textured,
        "alignment": alignment,
        "backbones": {"clip": models.clip_name, "vgg": models.vgg_name, "cx_bandwidth": cfg.cx_bandwidth},
        "unavailable": dict(models.unavailable),
        "per_view": per_view,
        "definitions": {**DEFINITIONS, "cx": DEFINITIONS["cx"].replace("h = bandwidth", f"h = {cfg.cx_bandwidth}")},
        "notes": notes + ([] if turntable.textured else ["the GLB has no base-colour texture: rendered white"]),
        "config": asdict(cfg),
        "device": str(device),
        "seconds": timings,
    }
    return EvalReport(metrics, turntable, ref_rgba)


def _align(mesh, ref_rgba: np.ndarray, cfg: EvalConfig) -> tuple[dict, list[str]]:
    """Scale and translate ``mesh`` (in place) onto the reference's silhouette; the record and notes."""
    if not cfg.align.enabled:
        return {"applied": False}, []
    mask = torch.from_numpy(ref_rgba[..., 3] >= 0.5)
    if not bool(mask.any()):
        return {"applied": False}, ["not aligned: the reference's mask is empty"]
    found = align_to_reference(mesh.vertices, mesh.faces, mask, turntable_cameras(cfg)[0], cfg.align)
    mesh.vertices = found.apply(mesh.vertices.double()).to(mesh.vertices.dtype)
    record = {"applied": True, **found.to_dict(), "resolution": cfg.align.resolution,
              "poor": found.iou_after < cfg.align.poor_iou}
    notes = []
    if record["poor"]:
        notes.append(f"the alignment is poor: reference-view silhouette IoU {found.iou_after:.3f} after aligning "
                     f"(below {cfg.align.poor_iou}); the shape differs from the input's, or the mesh's front is "
                     "not its +Z (the scores compare mismatched views)")
    return record, notes


def _thumb(image: np.ndarray, side: int) -> np.ndarray:
    if image.shape[0] == side:
        return image
    pil = Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
    return np.asarray(pil.resize((side, side), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0


def contact_sheet(report: EvalReport, columns: int = 8, thumb: int = 256) -> np.ndarray:
    """The input on white, then the turntable in view order, ``columns`` per row."""
    side = min(thumb, report.turntable.rgb.shape[1])
    cells = [_thumb(on_white(report.reference), side)]
    cells += [_thumb(v, side) for v in report.turntable.rgb.float().cpu().numpy()]
    rows = [cells[i : i + columns] for i in range(0, len(cells), columns)]
    return grid_image(rows, pad=2, fill=0.85)


def write_report(report: EvalReport, out_dir: str | Path, save_views: bool = True) -> tuple[Path, Path]:
    """Write ``metrics.json``, ``contact_sheet.png`` and (optionally) ``views/view_NNN.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(report.metrics, indent=2))
    sheet_path = out / "contact_sheet.png"
    sheet_path.write_bytes(png_bytes(contact_sheet(report)))
    if save_views:
        views = out / "views"
        views.mkdir(exist_ok=True)
        for k, view in enumerate(report.turntable.rgb.float().cpu().numpy()):
            (views / f"view_{k:03d}.png").write_bytes(png_bytes(view))
    return metrics_path, sheet_path


def summary_line(report: EvalReport) -> str:
    """One line for the terminal: every metric, or n/a."""
    v = report.metrics["metrics"]
    parts = [f"{k.upper()} {v[k]:.4f}" if v[k] is not None else f"{k.upper()} n/a" for k in METRIC_KEYS]
    return ", ".join(parts)
