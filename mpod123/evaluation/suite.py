"""Generate and score a folder of inputs, and tabulate the scores as the paper's Table 1.

Input layout (RealFusion15's): one folder per object, holding its cut-out
(``rgba.png``, ``image_rgba.png``, ``input_rgba.png`` or ``input.png``), or a
photo ``image.png`` with its ``mask.png`` (combined into a cut-out), or a
single image. Images placed directly in the folder are objects too, named by
their stem (files named ``mask`` or ``*_mask`` are skipped).

For each object: ``OUT/<name>/result.glb`` from the generate function (the
pipeline's :func:`mpod123.pipeline.generate.generate` unless another is given, e.g. by
tests), its work folder ``OUT/<name>/work``, then ``OUT/<name>/eval/`` with
``metrics.json`` and the contact sheet. The CLIP and VGG networks are loaded
once for the whole set. ``OUT/table.md`` and ``OUT/summary.json`` hold the
table: a row per object, the columns CX↓ CLIP↑ MVC↑ PSNR SSIM IoU, and a mean
row (over the objects where the metric is available).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import EvalConfig, EvalInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CUTOUT_NAMES = ("rgba.png", "image_rgba.png", "input_rgba.png", "input.png")
"""File names of an object folder's cut-out, in order of preference."""
COLUMNS = (("cx", "CX↓"), ("clip", "CLIP↑"), ("mvc", "MVC↑"), ("psnr", "PSNR↑"), ("ssim", "SSIM↑"), ("iou", "IoU↑"))

GenerateFn = Callable[..., Any]
"""``generate(image, out_glb, *, preset, device, seed, models, workdir, resume, ...)`` returning an
object with a ``.glb`` path: the signature of :func:`mpod123.pipeline.generate.generate`."""


@dataclass
class SetInput:
    name: str
    image: Path
    """The image given to generate (a cut-out or a photo)."""
    mask: Path | None = None
    """A separate mask (RealFusion's ``mask.png``), combined with the image into a cut-out."""


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _is_mask(path: Path) -> bool:
    stem = path.stem.lower()
    return stem == "mask" or stem.endswith("_mask")


def _object_in_folder(folder: Path) -> SetInput | None:
    for name in CUTOUT_NAMES:
        if (folder / name).is_file():
            return SetInput(folder.name, folder / name)
    images = sorted(p for p in folder.iterdir() if _is_image(p))
    photos = [p for p in images if p.stem.lower() == "image"]
    masks = [p for p in images if _is_mask(p)]
    if photos:
        return SetInput(folder.name, photos[0], masks[0] if masks else None)
    others = [p for p in images if not _is_mask(p)]
    if len(others) == 1:
        return SetInput(folder.name, others[0])
    if not images:
        return None
    raise EvalInputError(
        f"{folder}: cannot tell which image is the input among {[p.name for p in others]}; "
        f"name it one of {', '.join(CUTOUT_NAMES)} (or image.png with mask.png)"
    )


def find_inputs(folder: str | Path) -> list[SetInput]:
    """The objects of a set folder, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvalInputError(f"{folder} is not a folder of inputs")
    found: dict[str, SetInput] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        item = _object_in_folder(entry) if entry.is_dir() else (
            SetInput(entry.stem, entry) if _is_image(entry) and not _is_mask(entry) else None
        )
        if item is None:
            continue
        if item.name in found:
            raise EvalInputError(f"{folder}: two inputs are named {item.name!r}; rename one")
        found[item.name] = item
    if not found:
        raise EvalInputError(
            f"no inputs in {folder}: expected one folder per object with {CUTOUT_NAMES[0]} "
            "(or image.png + mask.png), or images directly in the folder"
        )
    return list(found.values())


def cutout_path(item: SetInput, out_dir: Path) -> Path:
    """The image to generate from and score against: the input, or image + mask combined (written to OUT)."""
    if item.mask is None:
        return item.image
    from PIL import Image

    rgb = Image.open(item.image).convert("RGB")
    mask = Image.open(item.mask).convert("L")
    if mask.size != rgb.size:
        raise EvalInputError(f"{item.mask} is {mask.size[0]}x{mask.size[1]} but {item.image} is {rgb.size[0]}x{rgb.size[1]}")
    rgba = rgb.copy()
    rgba.putalpha(mask)
    out = out_dir / "input_rgba.png"
    out_dir.mkdir(parents=True, exist_ok=True)
    rgba.save(out)
    return out


@dataclass
class SetRow:
    name: str
    metrics: dict[str, float | None]
    status: str = "ok"
    """"ok", or why the object has no scores."""
    glb: str | None = None
    eval_dir: str | None = None


@dataclass
class SetResult:
    rows: list[SetRow]
    mean: dict[str, float | None]
    info: dict[str, Any] = field(default_factory=dict)
    """Backbones, view count, resolution, preset, unavailable metrics."""

    @property
    def failed(self) -> list[SetRow]:
        return [r for r in self.rows if r.status != "ok"]


def mean_row(rows: list[SetRow]) -> dict[str, float | None]:
    """Per metric, the mean over the objects that have it (None when none has)."""
    out: dict[str, float | None] = {}
    for key, _ in COLUMNS:
        vals = [r.metrics.get(key) for r in rows if r.status == "ok" and r.metrics.get(key) is not None]
        out[key] = float(np.mean(vals)) if vals else None
    return out


def _cell(key: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if key == "psnr" else f"{value:.3f}"


def format_table(result: SetResult) -> str:
    """A Markdown table in the paper's layout, a mean row, and what the numbers were computed with."""
    head = "| object | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [head, "|" + " --- |" * (len(COLUMNS) + 1)]
    for row in result.rows:
        cells = [_cell(k, row.metrics.get(k)) for k, _ in COLUMNS] if row.status == "ok" else ["failed"] * len(COLUMNS)
        lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | " + " | ".join(_cell(k, result.mean.get(k)) for k, _ in COLUMNS) + " |")
    info = result.info
    notes = [
        (
            f"{info.get('views')} views at {info.get('resolution')}px on white; CLIP backbone {info.get('clip')}; "
            f"CX on {info.get('vgg')} with h = {info.get('cx_bandwidth')}; preset {info.get('preset')}"
        ),
        (
            "MVC is OUR definition (the paper gives none): mean CLIP similarity of views adjacent in azimuth, "
            "wrap-around included."
        ),
    ]
    for metric, reason in sorted(info.get("unavailable", {}).items()):
        notes.append(f"{metric.upper()} unavailable: {reason}")
    for row in result.failed:
        notes.append(f"{row.name}: {row.status}")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def default_generate() -> GenerateFn:
    """The pipeline's generate, imported only when a set is run without another."""
    from ..pipeline.generate import generate

    return generate


def evaluate_set(
    folder: str | Path,
    out: str | Path,
    cfg: EvalConfig | None = None,
    *,
    generate: GenerateFn | None = None,
    preset: str = "fast",
    seed: int = 0,
    device: str = "auto",
    models: Any = None,
    resume: bool = False,
    keep_existing: bool = False,
    generate_kwargs: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> SetResult:
    """Generate (unless kept) and score every input of ``folder`` into ``out``; write the table.

    ``models`` is passed to generate as it is (a ``ModelSources`` or None);
    ``generate_kwargs`` adds keyword arguments (e.g. ``tiny=True``). A failure
    on one object is recorded in its row and the set goes on.
    """
    from .report import evaluate, load_models, resolve_device, write_report

    cfg = cfg or EvalConfig()
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    items = find_inputs(folder)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gen = generate or default_generate()
    eval_models = load_models(cfg, resolve_device(cfg.device))
    for metric, reason in sorted(eval_models.unavailable.items()):
        log(f"{metric.upper()} unavailable: {reason}")
    rows: list[SetRow] = []
    for i, item in enumerate(items, 1):
        obj_dir = out / item.name
        glb = obj_dir / "result.glb"
        try:
            obj_dir.mkdir(parents=True, exist_ok=True)
            image = cutout_path(item, obj_dir)
            if keep_existing and glb.is_file():
                log(f"[{i}/{len(items)}] {item.name}: keeping {glb}")
            else:
                log(f"[{i}/{len(items)}] {item.name}: generating from {image}")
                made = gen(
                    image, glb, preset=preset, device=device, seed=seed, models=models,
                    workdir=obj_dir / "work", resume=resume, **(generate_kwargs or {}),
                )
                glb = Path(getattr(made, "glb", glb))
            report = evaluate(glb, image, cfg, eval_models)
            write_report(report, obj_dir / "eval", cfg.save_views)
            rows.append(SetRow(item.name, dict(report.metrics["metrics"]), "ok", str(glb), str(obj_dir / "eval")))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad object must not lose the others' scores
            reason = f"{type(exc).__name__}: {exc}"
            log(f"[{i}/{len(items)}] {item.name}: failed: {reason}")
            rows.append(SetRow(item.name, {k: None for k, _ in COLUMNS}, f"failed: {reason}", None, None))
    info = {
        "views": cfg.views,
        "resolution": cfg.resolution,
        "clip": eval_models.clip_name,
        "vgg": eval_models.vgg_name,
        "cx_bandwidth": cfg.cx_bandwidth,
        "preset": preset,
        "seed": seed,
        "unavailable": dict(eval_models.unavailable),
    }
    result = SetResult(rows, mean_row(rows), info)
    (out / "table.md").write_text(format_table(result))
    summary = {
        "objects": {r.name: {"metrics": r.metrics, "status": r.status, "glb": r.glb, "eval": r.eval_dir} for r in rows},
        "mean": result.mean,
        **info,
        "mvc_definition": "OUR definition: mean CLIP similarity of views adjacent in azimuth, wrap-around included",
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return result
