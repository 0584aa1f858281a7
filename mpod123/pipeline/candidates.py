"""Text to 3D: Stable Diffusion 1.5 makes candidate input images, matting picks one, the pipeline runs on it.

Why this way: the method needs one photo of one object. Stage 2 already loads
Stable Diffusion 1.5, so the same weights (``--sd``, or the tiny random ones of
``--tiny``) can draw that photo from a prompt. The prompt is augmented so the
model draws the object alone, whole and centred on a plain white background
(plus a negative prompt against scenery, crops and clutter), which is what the
plain-background matting of :mod:`mpod123.pipeline.preprocess` accepts. Diffusion does
not always obey, so ``count`` candidates are drawn and each is matted exactly
like a user's photo: the first whose matte is confident (one clean object) is
used, or the one the user names (``--pick K``, still matted). The prompt also
joins textual inversion's captions, so `<e>` is learned with the user's words.

Determinism: candidate ``i`` starts from latents drawn by a CPU generator
seeded from (run seed, i), so a candidate does not depend on how many others
are drawn, nor on the device. Candidates, their verdicts and the choice are
saved in the work folder (``candidates/0.png``..., ``candidates/candidates.json``)
and recorded in ``run.json`` under ``"text"``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config.candidates import CandidateConfig
from ..runtime.progress import CancelToken, Preview, Progress, ProgressCallback, StageDone, emit
from .prompt import MAX_PROMPT_CHARS, PromptError, check_prompt
from .runner import RunError

CANDIDATE_DIR = "candidates"
CANDIDATE_RECORD = "candidates.json"


class NoUsableCandidate(RunError):
    """No candidate image matted as one clean object; the message says what to try."""


def augmented_prompt(prompt: str, cfg: CandidateConfig) -> str:
    return check_prompt(prompt) + cfg.suffix


def candidate_seed(seed: int, index: int) -> int:
    """A 63-bit seed per (run seed, candidate index), independent of the number of candidates."""
    digest = hashlib.sha256(f"mpod123-candidate:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ------------------------------------------------------------------ drawing
class CandidateMaker:
    """A diffusers ``StableDiffusionPipeline`` assembled from the checkpoint's own components.

    Loaded through the same :func:`~mpod123.guidance.sds.load_component` as stage 2 (same
    weights, same fix-it error when they are missing), with the VAE's decoder kept (stage 2
    drops it) and no safety checker (the images never leave the user's machine unasked;
    the real checkpoint's checker would also double the memory). The scheduler is
    DPM-Solver++ built from the checkpoint's scheduler config.
    """

    def __init__(self, source: str, device: Any = "cpu", dtype: str = "auto") -> None:
        import torch
        from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        from ..guidance.sds import load_component, resolve_dtype
        from ..guidance.stable_diffusion import SWITCH

        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)

        def load(cls, sub, dt):
            return load_component(cls, source, sub, dt, "Stable Diffusion", SWITCH)

        scheduler = load(DPMSolverMultistepScheduler, "scheduler", None)
        self.pipe = StableDiffusionPipeline(
            vae=load(AutoencoderKL, "vae", self.dtype), text_encoder=load(CLIPTextModel, "text_encoder", self.dtype),
            tokenizer=load(CLIPTokenizer, "tokenizer", None), unet=load(UNet2DConditionModel, "unet", self.dtype),
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        ).to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.source = source

    @property
    def native_size(self) -> int:
        return int(self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor)

    def draw(self, prompt: str, cfg: CandidateConfig, seed: int, index: int,
             on_step: Callable[[int], None] | None = None) -> np.ndarray:
        """Candidate ``index`` as (size, size, 3) float32 in [0, 1]."""
        import torch

        size = cfg.size or self.native_size
        unet = self.pipe.unet
        shape = (1, unet.config.in_channels, size // self.pipe.vae_scale_factor, size // self.pipe.vae_scale_factor)
        gen = torch.Generator().manual_seed(candidate_seed(seed, index))
        latents = torch.randn(shape, generator=gen).to(self.device, self.dtype)

        def step_end(pipe, step, timestep, kwargs):
            if on_step is not None:
                on_step(step + 1)
            return kwargs

        with torch.no_grad():
            out = self.pipe(
                augmented_prompt(prompt, cfg), negative_prompt=cfg.negative_prompt, height=size, width=size,
                num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale, latents=latents, output_type="np",
                callback_on_step_end=step_end,
            )
        return np.clip(np.asarray(out.images[0], dtype=np.float32), 0.0, 1.0)

    def close(self) -> None:
        import torch

        self.pipe = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def make_candidates(
    prompt: str, source: str, cfg: CandidateConfig, seed: int, folder: str | Path, device: Any = "cpu",
    dtype: str = "auto", callback: ProgressCallback | None = None, cancel: CancelToken | None = None,
) -> list[Path]:
    """Draw ``cfg.count`` candidates and write them as ``folder/<i>.png``; returns the paths.

    Events: Progress("candidates", step, count * steps) and a Preview per candidate with
    stage ``candidate_<i>`` (so a client keeps each, not only the latest), then StageDone.
    """
    from ..imaging.images import png_bytes

    prompt = check_prompt(prompt)
    cfg.validate()
    cancel = cancel or CancelToken()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    maker = CandidateMaker(source, device, dtype)
    total = cfg.count * cfg.steps
    paths: list[Path] = []
    try:
        for i in range(cfg.count):
            cancel.raise_if_cancelled()

            def on_step(step: int, i: int = i) -> None:
                done = i * cfg.steps + step
                spent = time.perf_counter() - start
                emit(callback, Progress("candidates", done, total, {}, spent, spent / done * (total - done)))
                cancel.raise_if_cancelled()

            image = maker.draw(prompt, cfg, seed, i, on_step)
            png = png_bytes(image)
            path = folder / f"{i}.png"
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(png)
            os.replace(tmp, path)
            paths.append(path)
            emit(callback, Preview(f"candidate_{i}", i, png, image.shape[1], image.shape[0]))
    finally:
        maker.close()
    emit(callback, StageDone("candidates", cfg.count, time.perf_counter() - start, None))
    return paths


# ------------------------------------------------------------------ picking
@dataclass
class Verdict:
    """What the matting made of one candidate."""

    index: int
    usable: bool
    """One clean object: the matting succeeded with a confidence at least ``min_confidence``."""
    method: str = ""
    confidence: float = 0.0
    reason: str = ""
    """Why it is not usable (the matting's own words), empty when it is."""


def judge(path: str | Path, index: int, preprocess_cfg) -> Verdict:
    """Matte candidate ``index`` exactly like a user's photo and say whether it is one clean object."""
    from .preprocess import FIX_IT, InputImageError, preprocess

    try:
        pre = preprocess(path, preprocess_cfg)
    except InputImageError as exc:
        return Verdict(index, False, reason=str(exc).replace(": " + FIX_IT, "").split("; ")[0])
    ok = pre.method == "alpha" or pre.confidence >= preprocess_cfg.min_confidence
    why = "" if ok else f"matting confidence {pre.confidence:.2f} below {preprocess_cfg.min_confidence}"
    return Verdict(index, ok, pre.method, round(float(pre.confidence), 3), why)


def pick_candidate(paths: list[Path], preprocess_cfg, pick: int | None = None,
                   prompt: str = "", where: str | Path = "") -> tuple[int, list[Verdict]]:
    """(chosen index, verdicts so far): the first usable candidate, or ``pick`` (still matted: a
    pick the matting cannot cut out at all is refused with the matting's reason).

    Raises :class:`NoUsableCandidate` with what to try when none is usable."""
    if pick is not None:
        if not 0 <= pick < len(paths):
            raise NoUsableCandidate(f"--pick {pick} is out of range: there are {len(paths)} candidates (0-{len(paths) - 1})")
        verdict = judge(paths[pick], pick, preprocess_cfg)
        if not verdict.method:
            raise NoUsableCandidate(
                f"candidate {pick} cannot be matted: {verdict.reason}. Look at {paths[pick]}; pick another one, "
                "draw others (another --seed), or force the plain-background matting to use it anyway "
                "(--set preprocess.matting=plain)")
        return pick, [verdict]
    verdicts = []
    for i, path in enumerate(paths):
        verdict = judge(path, i, preprocess_cfg)
        verdicts.append(verdict)
        if verdict.usable:
            return i, verdicts
    reasons = "; ".join(f"{v.index}: {v.reason}" for v in verdicts)
    about = f" for {prompt!r}" if prompt else ""
    raise NoUsableCandidate(
        f"none of the {len(paths)} candidates{about} is one clean object on a plain background ({reasons}). "
        f"Draw more (--candidates {min(16, 2 * len(paths))}), draw others (another --seed), or look at them "
        f"in {where or 'the candidates folder'} and choose one yourself with --pick K")


def prompt_templates(prompt: str) -> tuple[str, ...]:
    """Textual-inversion captions that carry the user's words beside `<e>` (braces escaped for
    ``str.format``); added to the default templates, never replacing them."""
    text = check_prompt(prompt).replace("{", "{{").replace("}", "}}")
    return (f"a photo of a {{}}, {text}", f"a rendering of a {{}}, {text}")


# ------------------------------------------------------------------ the run
@dataclass
class TextRun:
    """The text-to-3D part of a run, as recorded in run.json (``"text"``)."""

    prompt: str
    augmented_prompt: str
    negative_prompt: str
    candidates: list[str]
    verdicts: list[dict] = field(default_factory=list)
    picked: int = -1
    picked_by: str = "auto"
    config: dict = field(default_factory=dict)


def _reusable(folder: Path, key: dict) -> list[Path] | None:
    """The candidates of an earlier run in this folder with the same prompt, seed, model and config."""
    try:
        saved = json.loads((folder / CANDIDATE_RECORD).read_text())
    except (OSError, ValueError):
        return None
    if saved.get("key") != key:
        return None
    paths = [folder / f"{i}.png" for i in range(key["config"]["count"])]
    return paths if all(p.is_file() for p in paths) else None


def generate_from_prompt(
    prompt: str,
    out_glb: str | Path,
    *,
    candidates: CandidateConfig | None = None,
    pick: int | None = None,
    preset: str = "fast",
    device: str = "auto",
    seed: int = 0,
    models=None,
    workdir: str | Path | None = None,
    resume: bool = False,
    callback: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    tiny: bool = False,
    config=None,
):
    """A prompt to a textured GLB: candidates, the pick, then :class:`~mpod123.pipeline.runner.Runner`."""
    from .generate import configure, default_workdir
    from .runner import Runner, check_writable

    prompt = check_prompt(prompt)
    ccfg = (candidates or (CandidateConfig.tiny() if tiny else CandidateConfig())).validate()
    if pick is not None and not 0 <= pick < ccfg.count:
        raise ValueError(f"--pick {pick} is out of range: draw at least {pick + 1} candidates (--candidates)")
    cfg = configure(preset, seed, models, tiny, config)
    cfg.inversion.templates = tuple(cfg.inversion.templates) + prompt_templates(prompt)
    out = Path(out_glb)
    check_writable(out)
    cancel = cancel or CancelToken()
    runner = Runner(cfg, workdir or default_workdir(out), device, callback, cancel, resume)
    runner._prepare_workdir()  # refuse a folder with another run now, before drawing anything
    folder = runner.workdir / CANDIDATE_DIR
    key = {"prompt": prompt, "seed": cfg.seed, "model": cfg.sd.model, "dtype": cfg.sd.dtype, "config": asdict(ccfg)}
    paths = _reusable(folder, key) if resume else None
    if paths is None:
        paths = make_candidates(prompt, cfg.sd.model, ccfg, cfg.seed, folder, runner.device, cfg.sd.dtype,
                                callback, cancel)
    text = TextRun(prompt, augmented_prompt(prompt, ccfg), ccfg.negative_prompt,
                   [f"{CANDIDATE_DIR}/{p.name}" for p in paths], picked_by="pick" if pick is not None else "auto",
                   config=asdict(ccfg))
    try:
        text.picked, verdicts = pick_candidate(paths, cfg.preprocess, pick, prompt, folder)
        text.verdicts = [asdict(v) for v in verdicts]
    except NoUsableCandidate as exc:
        text.verdicts = [asdict(judge(p, i, cfg.preprocess)) for i, p in enumerate(paths)] if pick is None else []
        write_record(folder, key, text, str(exc))
        raise
    earlier = _earlier_pick(folder, key) if resume else None
    if earlier is not None and earlier != text.picked and (runner.workdir / "outline.ckpt").is_file():
        raise RunError(f"the run in {runner.workdir} was made from candidate {earlier}, not {text.picked}; resume "
                       f"with --pick {earlier}, or choose another --workdir for candidate {text.picked}")
    write_record(folder, key, text)
    runner.extra_record["text"] = asdict(text)
    return runner.run(paths[text.picked], out)


def _earlier_pick(folder: Path, key: dict) -> int | None:
    """The candidate an earlier run in this folder was made from (None: no such run)."""
    try:
        saved = json.loads((folder / CANDIDATE_RECORD).read_text())
    except (OSError, ValueError):
        return None
    picked = saved.get("picked")
    return picked if saved.get("key") == key and isinstance(picked, int) and picked >= 0 else None


def write_record(folder: Path, key: dict, text: TextRun, error: str = "") -> Path:
    """``candidates/candidates.json``: what was drawn, the verdicts, the choice (or why there is none)."""
    path = folder / CANDIDATE_RECORD
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"key": key, **asdict(text), **({"error": error} if error else {})}, indent=1))
    os.replace(tmp, path)
    return path


__all__ = [
    "CandidateConfig", "CandidateMaker", "MAX_PROMPT_CHARS", "NoUsableCandidate", "PromptError", "TextRun",
    "Verdict", "augmented_prompt", "candidate_seed", "check_prompt", "generate_from_prompt", "judge",
    "make_candidates", "pick_candidate", "prompt_templates",
]
