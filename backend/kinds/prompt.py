"""Prompt jobs: text to 3D in the service (``options.prompt`` instead of an image frame).

Two kinds, so that an artist can choose before the 3D stages start:

* ``candidates_only: true``: Stable Diffusion draws the candidates, each arrives as a
  ``preview`` event of stage ``candidate_<i>`` (the PNG as its binary frame), each is
  matted like a photo, and the result is a small zip (``<i>.png`` and
  ``candidates.json`` with the matting's verdicts). The artist's pick is then
  submitted as an ordinary image job, with ``prompt`` passed along for textual
  inversion's captions (``prompt_for_inversion``, :mod:`backend.kinds.image`).
* otherwise: the whole run from the prompt, the first clean candidate (or ``pick``)
  taken automatically, the GLB as the result.

Everything a client sends is checked at the front door (:func:`check_submit`):
the prompt (text, not empty, at most 500 characters, printable), no image frame
beside it, and the candidate options' types and ranges. The same checks run
again in the worker. Stdlib only, and mpod123's (pure-Python) prompt check only when a
prompt is there: the server never loads torch, nor mpod123 for an image job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..protocol import ProtocolError
from ..workers import JobCancelled, JobContext
from .common import event_forwarder, pipeline_config

MAX_CANDIDATES = 16
DEFAULT_CANDIDATES = 4
PROMPT_OPTIONS = ("prompt", "candidates", "pick", "candidates_only")


@dataclass(frozen=True)
class PromptOptions:
    """A prompt job's options, checked."""

    prompt: str
    candidates: int
    pick: int | None
    candidates_only: bool


def _int(options: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = options.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


def parse_prompt_options(options: dict[str, Any]) -> PromptOptions:
    """The prompt options of a job, or ValueError (PromptError for the prompt) saying what is wrong."""
    from mpod123.pipeline.prompt import check_prompt

    prompt = check_prompt(options.get("prompt"))
    candidates = _int(options, "candidates", 1, MAX_CANDIDATES) or DEFAULT_CANDIDATES
    pick = _int(options, "pick", 0, MAX_CANDIDATES - 1)
    if pick is not None and pick >= candidates:
        raise ValueError(f"pick {pick} is out of range: only {candidates} candidates are drawn (0-{candidates - 1})")
    only = options.get("candidates_only", False)
    if not isinstance(only, bool):
        raise ValueError(f"candidates_only must be true or false, got {type(only).__name__}")
    if only and pick is not None:
        raise ValueError("candidates_only draws candidates to choose from; pick belongs to the job that follows")
    return PromptOptions(prompt, candidates, pick, only)


def _refuse_stray(options: dict[str, Any]) -> None:
    stray = [k for k in PROMPT_OPTIONS[1:] if k in options]
    if stray:
        raise ProtocolError("BadOption", f"{', '.join(stray)} only apply to a prompt job",
                            "add options.prompt (and no image), or leave them out")


def check_submit(options: dict[str, Any], buffers: list[bytes]) -> bool:
    """At the front door: True for a valid prompt job, False for an image job (no prompt options);
    a ProtocolError with the fix otherwise."""
    if "prompt" not in options and "prompt_for_inversion" not in options:
        _refuse_stray(options)
        return False  # an image job: nothing of this module's to check (and nothing to import)
    from mpod123.pipeline.prompt import PromptError, check_prompt

    inversion_prompt = options.get("prompt_for_inversion")
    if inversion_prompt is not None:
        try:
            check_prompt(inversion_prompt)
        except PromptError as exc:
            raise ProtocolError("BadPrompt", f"prompt_for_inversion: {exc}", "send the prompt the image was drawn from") from None
    if "prompt" not in options:
        _refuse_stray(options)
        return False
    if buffers:
        raise ProtocolError("PromptAndImage", "the job has both a prompt and an image frame",
                            "send either an image, or options.prompt with no binary frame")
    if inversion_prompt is not None:
        raise ProtocolError("BadOption", "prompt_for_inversion is for image jobs", "a prompt job uses its own prompt")
    try:
        parse_prompt_options(options)
    except PromptError as exc:
        raise ProtocolError("BadPrompt", str(exc), "send a short description of the object as options.prompt") from None
    except ValueError as exc:
        raise ProtocolError("BadOption", str(exc), "fix the option and submit again") from None
    return True


def run_prompt_job(ctx: JobContext, tiny: bool) -> str:
    """A prompt job (see the module docstring); returns the result file's path."""
    from mpod123.runtime.progress import Cancelled, CancelToken

    cfg = pipeline_config(ctx, tiny)
    cancel = CancelToken()
    try:
        return _run(ctx, cfg, event_forwarder(ctx, cancel), cancel, tiny)
    except Cancelled as exc:
        raise JobCancelled(str(exc) or "cancelled by the client") from None


def _run(ctx: JobContext, cfg, on_event, cancel, tiny: bool) -> str:
    import json
    import zipfile
    from dataclasses import asdict

    from mpod123.pipeline.candidates import CandidateConfig, generate_from_prompt, judge, make_candidates
    from mpod123.runtime.devices import resolve_device

    opts = parse_prompt_options(ctx.options)
    ccfg = CandidateConfig.tiny(opts.candidates) if tiny else CandidateConfig(count=opts.candidates)
    if not opts.candidates_only:
        result = generate_from_prompt(
            opts.prompt, ctx.workdir / "result.glb", candidates=ccfg, pick=opts.pick, preset=cfg.preset,
            seed=cfg.seed, tiny=tiny, config=cfg, workdir=ctx.workdir / "run", resume=True, callback=on_event,
            cancel=cancel,
        )
        return str(result.glb)
    folder = ctx.workdir / "candidates"
    paths = make_candidates(opts.prompt, cfg.sd.model, ccfg, cfg.seed, folder, resolve_device("auto"), cfg.sd.dtype,
                            on_event, cancel)
    verdicts = [asdict(judge(p, i, cfg.preprocess)) for i, p in enumerate(paths)]
    usable = [v["index"] for v in verdicts if v["usable"]]
    ctx.emit("log", {"text": f"{len(paths)} candidates drawn; clean single objects: "
                             f"{', '.join(map(str, usable)) or 'none'}", "verdicts": verdicts})
    out = Path(ctx.workdir) / "candidates.zip"
    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:  # PNGs are compressed already
        for p in paths:
            z.write(p, p.name)
        z.writestr("candidates.json", json.dumps({"prompt": opts.prompt, "seed": cfg.seed, "verdicts": verdicts}, indent=1))
    tmp.replace(out)
    return str(out)


__all__ = ["PromptOptions", "check_submit", "parse_prompt_options", "run_prompt_job"]
