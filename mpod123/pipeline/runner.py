"""The runner: one photo to a textured GLB, with events, checkpoints and a run record.

Order: preprocess -> stage 1 (NeRF + Zero123 SDS) -> textual inversion of
`<e>` (or a loaded embedding) -> stage 2 (DMTet + DAI/MRCA + L_nvm) -> export.

The work folder holds everything a run needs to resume and everything a user
wants to inspect::

    input.png, mask.png        the processed input (what the model was given)
    outline.ckpt, detail.ckpt  stage checkpoints (at each stage's end, and every N steps)
    embedding.safetensors      the learned `<e>`
    previews/<stage>_<step>.png, previews/<stage>_<step>.glb (live 3D previews)
    result.glb (+ OBJ)         the export, copied atomically to the output path
    run.json                   config, versions, backends, timings, seed, status

With ``resume=True`` a finished stage is loaded rather than trained again and
an interrupted one continues from its last checkpoint, so a run killed in
stage 2 does not repeat stage 1. Without it, a folder that already holds a
run is refused rather than overwritten. Cancel stops within one step; the
folder stays consistent (run.json says "cancelled", no output file is written).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import PipelineConfig, from_dict, to_dict
from ..runtime.devices import CUBLAS_DETERMINISTIC, deterministic_algorithms, deterministic_mode, resolve_device  # noqa: F401 (CUBLAS_: part of this API)
from ..runtime.errors import Mpod123Error
from ..runtime.progress import (Cancelled, CancelToken, Event, MeshPreview, Preview, Progress, ProgressCallback, Result,
                        StageDone, emit)

RUN_FILE = "run.json"
STATE_FILES = ("outline.ckpt", "detail.ckpt", "embedding.safetensors")


class RunError(Mpod123Error, RuntimeError):
    """A run that cannot start or continue as asked; the message says what to do."""


@dataclass
class ModelSources:
    """Where the weights come from: hub ids or local folders (None keeps the config's)."""

    zero123: str | None = None
    sd: str | None = None
    embedding: str | None = None

    def apply(self, cfg: PipelineConfig) -> PipelineConfig:
        if self.zero123:
            cfg.zero123.model = self.zero123
        if self.sd:
            cfg.sd.model = self.sd
        if self.embedding:
            cfg.embedding = self.embedding
        return cfg


@dataclass
class RunResult:
    glb: Path
    workdir: Path
    record: dict[str, Any]


def check_writable(path: Path) -> None:
    """Fail now, not after an hour of work, when the output cannot be written."""
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".{path.name}.probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunError(f"cannot write the output {path}: {exc.strerror or exc}; choose a writable -o path") from None
    if path.is_dir():
        raise RunError(f"the output {path} is a folder; give a file name ending in .glb")


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    from .. import __version__

    return {
        "mpod123": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


class Runner:
    """Runs the whole method for one image; see the module docstring."""

    def __init__(
        self,
        cfg: PipelineConfig,
        workdir: str | Path,
        device: str = "auto",
        callback: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        resume: bool = False,
        views: list | tuple = (),
    ) -> None:
        """``views``: extra photos with their angles (:class:`mpod123.pipeline.extra_views.ViewSpec`)."""
        self.cfg = cfg
        self.views = list(views)
        self.extra_views: list = []
        self.workdir = Path(workdir)
        self.device = resolve_device(device)
        self.callback = callback
        self.cancel = cancel or CancelToken()
        self.resume = resume
        self.record: dict[str, Any] = {}
        self.extra_record: dict[str, Any] = {}
        """Entries added to run.json at the start of :meth:`run` (e.g. ``"text"`` for a prompt's candidates)."""
        deterministic_mode(cfg.deterministic, self.device)  # before any CUDA work of this run

    # ------------------------------------------------------------------ events
    def _on_event(self, event: Event) -> None:
        if isinstance(event, Preview):
            folder = self.workdir / "previews"
            folder.mkdir(exist_ok=True)
            (folder / f"{event.stage}_{event.step:06d}.png").write_bytes(event.png)
        elif isinstance(event, MeshPreview):
            folder = self.workdir / "previews"
            folder.mkdir(exist_ok=True)
            (folder / f"{event.stage}_{event.step:06d}.glb").write_bytes(event.glb)
        emit(self.callback, event)

    def _emit_matte(self, pre) -> None:
        """The cut-out the model will see, as the first preview (stage "matte"): a bad matte shows within
        seconds of submitting, long before the first stage-1 preview."""
        from ..imaging.images import png_bytes

        h, w = pre.rgba.shape[:2]
        self._on_event(Preview("matte", 0, png_bytes(pre.rgba), w, h))

    def _save_record(self, **updates: Any) -> None:
        self.record.update(updates)
        _write_json(self.workdir / RUN_FILE, self.record)

    # --------------------------------------------------------------- work folder
    def _prepare_workdir(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        previous = self.workdir / RUN_FILE
        has_state = any((self.workdir / f).exists() for f in STATE_FILES)
        if not self.resume:
            if has_state:
                raise RunError(
                    f"the work folder {self.workdir} holds an earlier run; pass --resume to continue it, "
                    "or choose another --workdir"
                )
            return
        if previous.is_file():
            try:
                saved = json.loads(previous.read_text())
                saved_cfg = from_dict(PipelineConfig, saved["config"])
            except (ValueError, KeyError, TypeError) as exc:
                raise RunError(f"cannot read {previous} to resume ({exc}); delete the folder to start over") from None
            if saved_cfg != self.cfg and has_state:
                raise RunError(
                    f"the run in {self.workdir} used other settings (preset {saved_cfg.preset!r}, seed "
                    f"{saved_cfg.seed}); resume with the same options, or choose another --workdir"
                )
            from .extra_views import views_fingerprint

            if has_state and saved.get("views_fingerprint") != views_fingerprint(self.views):
                raise RunError(f"the run in {self.workdir} had other extra views (--view); resume with the same "
                               "views, or choose another --workdir")

    # --------------------------------------------------------------------- run
    def run(self, image: str | Path | bytes, out_glb: str | Path | None = None) -> RunResult:
        out = Path(out_glb) if out_glb is not None else None
        if out is not None:
            check_writable(out)
        self._prepare_workdir()
        t_start = time.perf_counter()
        self.record = {
            "status": "running",
            "preset": self.cfg.preset,
            "seed": self.cfg.seed,
            "device": str(self.device),
            "config": to_dict(self.cfg),
            "versions": _versions(),
            "models": {"zero123": self.cfg.zero123.model, "sd": self.cfg.sd.model, "embedding": self.cfg.embedding},
            "timings_s": {},
            "backends": {},
            "resumed": self.resume,
            "source": image if isinstance(image, str) else str(image) if isinstance(image, Path) else "<bytes>",
            "views_fingerprint": self._views_fingerprint(),
            **self.extra_record,
        }
        self._save_record()
        deterministic = deterministic_mode(self.cfg.deterministic, self.device)
        self.record["deterministic"] = deterministic
        try:
            with deterministic_algorithms(deterministic):
                glb = self._run(image, out)
        except (Cancelled, KeyboardInterrupt) as exc:
            self._save_record(status="cancelled", reason=str(exc) or type(exc).__name__)
            raise
        except BaseException as exc:
            self._save_record(status="failed", reason=f"{type(exc).__name__}: {exc}")
            raise
        self.record["timings_s"]["total"] = round(time.perf_counter() - t_start, 3)
        if self.device.type == "cuda":
            self.record["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3)
        self._save_record(status="done", output=str(glb))
        return RunResult(glb, self.workdir, self.record)

    def _views_fingerprint(self) -> str | None:
        from .extra_views import views_fingerprint

        return views_fingerprint(self.views)

    def _timed(self, name: str, t0: float) -> None:
        self.record["timings_s"][name] = round(time.perf_counter() - t0, 3)
        self._save_record()

    def _run(self, image: str | Path | bytes, out: Path | None) -> Path:
        from .preprocess import preprocess
        from ..stages.base import ReferenceView

        cfg = self.cfg
        t0 = time.perf_counter()
        pre = preprocess(image, cfg.preprocess)
        pre.save(self.workdir)
        self.record["input"] = {"method": pre.method, "confidence": round(pre.confidence, 3),
                                "source_size": list(pre.source_size), "bbox": list(pre.bbox),
                                "reference_size": list(pre.rgba.shape[:2])}
        self._timed("preprocess", t0)
        self._emit_matte(pre)
        reference = ReferenceView.on_orbit(torch.from_numpy(pre.rgba), cfg.outline.camera)
        if self.views:  # extra photos with known angles (mpod123.pipeline.extra_views)
            from .extra_views import reference_views, save_views

            prepared = reference_views(self.views, pre, cfg)
            self.record["views"] = save_views(self.workdir, prepared)
            self.extra_views = [ref for _, _, ref in prepared]

        outline = self._outline(reference, pre.rgb_on_white)
        self.cancel.raise_if_cancelled()
        models = self._inversion(reference)
        self.cancel.raise_if_cancelled()
        detail = self._detail(reference, outline, models)
        del models
        self.cancel.raise_if_cancelled()
        return self._export(detail, out)

    def _train_or_load(self, stage) -> None:
        """Train ``stage`` to its configured steps, continuing from its checkpoint when resuming;
        a finished checkpoint is only loaded (its StageDone is still reported)."""
        ckpt = self.workdir / f"{stage.name}.ckpt"
        stage.deterministic = self.cfg.deterministic
        if self.resume and ckpt.is_file():
            stage.load_checkpoint(ckpt)
        if stage.step < stage.cfg.steps:
            stage.run(ckpt)
        else:
            emit(self.callback, StageDone(stage.name, stage.step, stage.elapsed_s, str(ckpt)))

    def _outline(self, reference, rgb_on_white: np.ndarray):
        from ..guidance.zero123 import Zero123Guidance
        from ..stages.outline import OutlineStage

        t0 = time.perf_counter()
        guidance = Zero123Guidance(
            self.cfg.zero123, torch.from_numpy(rgb_on_white).float(), reference.camera, device=self.device
        )
        stage = OutlineStage(self.cfg.outline, reference, guidance, self.device, self._on_event, self.cancel)
        stage.add_reference_views(self.extra_views)
        self._train_or_load(stage)
        stage.guidance = None  # Zero123 is not needed any more: free its memory
        del guidance
        self._free()
        self.record["backends"].update(
            {"hash_grid": stage.field.encoding.backend, "ray_marching": stage.renderer.marcher.backend}
        )
        self._record_stage_health(stage)
        self.record["outline_steps"] = stage.step
        self._timed("outline", t0)
        return stage

    def _inversion(self, reference):
        from ..guidance.stable_diffusion import load_stable_diffusion
        from ..guidance.textual_inversion import TextualInversion, add_token, load_embedding, save_embedding
        from ..stages.base import OptimisationStage

        t0 = time.perf_counter()
        cfg = self.cfg
        models = load_stable_diffusion(cfg.sd.model, self.device, cfg.sd.dtype)
        saved = self.workdir / "embedding.safetensors"
        source = cfg.embedding or (str(saved) if self.resume and saved.is_file() else None)
        if source:
            _, vector = load_embedding(source)
            add_token(models, cfg.sd.token, vector)
            self.record["inversion"] = {"loaded": source}
        else:
            ti = TextualInversion(cfg.inversion, models, cfg.sd.token)
            start = time.perf_counter()

            last = [-float("inf")]

            def on_step(step: int, total: int, loss: float) -> None:
                spent = time.perf_counter() - start
                rate = OptimisationStage.progress_rate_hz
                if rate > 0 and spent - last[0] < 1.0 / rate and step < total:
                    return  # throttled like the stages' progress: at most a few a second, always the last
                last[0] = spent
                emit(self.callback, Progress("inversion", step, total, {"ti": float(loss)}, spent, spent / step * (total - step)))

            if self.extra_views:  # every view joins the augmentation pool
                from .extra_views import encode_view_pool

                encode_view_pool(ti, [reference.rgba, *(v.rgba for v in self.extra_views)])
            result = ti.train(reference.rgba, on_step, lambda: self.cancel.cancelled)
            self.cancel.raise_if_cancelled()
            save_embedding(saved, cfg.sd.token, result.vector)
            emit(self.callback, StageDone("inversion", result.steps, result.seconds, str(saved)))
            self.record["inversion"] = {"steps": result.steps, "seconds": round(result.seconds, 3),
                                        "final_loss": result.losses[-1] if result.losses else None}
        self._timed("inversion", t0)
        return models

    def _detail(self, reference, outline, models):
        from ..guidance.stable_diffusion import StableDiffusionGuidance
        from ..stages.detail import DetailStage

        t0 = time.perf_counter()
        guidance = StableDiffusionGuidance(self.cfg.sd, models)
        try:
            stage = DetailStage(
                self.cfg.detail, reference, guidance, outline.field, outline.opacity, self.device, self._on_event, self.cancel
            )
            stage.add_reference_views(self.extra_views)
            self._train_or_load(stage)
        finally:
            guidance.close()
        stage.guidance = None
        self._free()
        self.record["backends"]["rasterizer"] = stage.renderer.backend
        self._record_stage_health(stage)
        self.record["detail_steps"] = stage.step
        self._timed("detail", t0)
        return stage

    def _export(self, detail, out: Path | None) -> Path:
        from ..export import export_mesh

        t0 = time.perf_counter()
        ex = self.cfg.export
        mesh = detail.mesh().detach().without_small_parts(ex.min_part_fraction, ex.part_relative_to)
        result = export_mesh(mesh, detail.texture.color, self.workdir / "result.glb", self.cfg.export)
        self.record["backends"]["uv"] = result.uv_backend
        self.record["mesh"] = {"faces": result.n_faces, "vertices": result.n_vertices, "texture_size": result.texture_size}
        final = result.glb
        if out is not None:
            tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
            shutil.copyfile(result.glb, tmp)
            os.replace(tmp, out)
            final = out
        emit(self.callback, StageDone("export", 1, time.perf_counter() - t0, None))
        self._timed("export", t0)
        digest = hashlib.sha256(final.read_bytes()).hexdigest()
        self.record["sha256"] = digest
        emit(self.callback, Result(str(final), digest, {"faces": result.n_faces, "vertices": result.n_vertices}))
        return final

    def _record_stage_health(self, stage) -> None:
        """Skipped non-finite steps per stage, and why ``auto`` chose torch for an accelerator."""
        from ..runtime.accelerators import fallback_reasons

        self.record.setdefault("skipped_steps", {})[stage.name] = stage.skipped_steps
        self.record.setdefault("mesh_previews", {})[stage.name] = stage.mesh_previews.stats()
        reasons = fallback_reasons()
        if reasons:
            self.record["backend_fallbacks"] = reasons

    def _free(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


__all__ = ["ModelSources", "RunError", "RunResult", "Runner", "check_writable", "resolve_device"]
