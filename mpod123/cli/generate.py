"""``mpod123 generate IMAGE -o OUT.glb`` (or ``--prompt TEXT``): the main job.

Every setting is a ``--set`` path; ``--faces``, ``--texture-size`` and ``--candidates`` are other names
for ``export.target_faces``, ``export.texture_size`` and ``candidates.count``, checked where the
setting is (:mod:`mpod123.config.overrides`). With ``--prompt`` the candidate images are drawn first
(:mod:`mpod123.pipeline.candidates`, settings ``--set candidates.*``); with an IMAGE the pipeline
(:func:`mpod123.pipeline.generate.generate`) starts from it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config.candidates import CandidateConfig
from ..runtime.errors import UsageError
from .common import (EXIT_INTERRUPTED, EXIT_OK, StageBars, add_set_option, add_setting_flag, run_resumable,
                     setting_labels)


def candidate_config(args: argparse.Namespace) -> CandidateConfig:
    """The candidates' settings before ``--set candidates.*`` (fewer steps with ``--tiny``)."""
    return CandidateConfig.tiny() if args.tiny else CandidateConfig()


def generate_config(args: argparse.Namespace, candidates: CandidateConfig | None = None):
    """The preset's (or the recorded ``--config``'s) PipelineConfig with the seed and the ``--set``
    overrides (flags that are settings among them) applied; ``candidates`` receives ``candidates.*``."""
    from ..config.overrides import run_config

    groups = {"candidates": candidates if candidates is not None else candidate_config(args)}
    return run_config(args.preset, args.seed, args.config, args.overrides or [], setting_labels(args), groups)


def _check_input_choice(args: argparse.Namespace) -> bool:
    """Exactly one of IMAGE and ``--prompt``, and the prompt's options only with a prompt; True: a prompt."""
    sets_candidates = any(a.partition("=")[0].strip().startswith("candidates.") for a in args.overrides or [])
    if args.image is not None and args.prompt is not None:
        raise UsageError("give either an IMAGE or --prompt, not both (an image needs no candidates)")
    if args.prompt is None:
        if args.image is None:
            raise UsageError("give an IMAGE to generate from, or --prompt \"a red vintage kettle\" for text to 3D")
        if args.pick is not None or sets_candidates:
            raise UsageError("--candidates, --pick and --set candidates.* choose among the images drawn for --prompt; "
                             "with an IMAGE leave them out")
        return False
    if args.views:
        raise UsageError("--view adds photos of the object to an IMAGE; with --prompt the object is drawn, so there "
                         "is no photo to add views to: leave --view out, or generate from a photo")
    return True


def cmd_generate(args: argparse.Namespace) -> int:
    from ..pipeline.candidates import check_prompt, generate_from_prompt
    from ..pipeline.extra_views import parse_view_specs
    from ..pipeline.generate import ModelSources, default_workdir, generate

    from_prompt = _check_input_choice(args)
    candidates = candidate_config(args)
    config = generate_config(args, candidates)
    views = parse_view_specs(args.views or [])
    run = generate
    if from_prompt:
        prompt = check_prompt(args.prompt)
        candidates.validate()
        if args.pick is not None and not 0 <= args.pick < candidates.count:
            raise UsageError(f"--pick {args.pick} is out of range: draw at least {args.pick + 1} candidates "
                             "(--candidates)")

        def run(_image, out_glb, views=(), **kwargs):  # views: always empty here (refused above)
            return generate_from_prompt(prompt, out_glb, candidates=candidates, pick=args.pick, **kwargs)

    bars = StageBars()
    workdir = Path(args.workdir) if args.workdir else default_workdir(args.out)
    result = run_resumable(bars, workdir, lambda: run(
        args.image, args.out, preset=config.preset, device=args.device, seed=config.seed,
        models=ModelSources(args.zero123, args.sd, args.embedding), workdir=workdir,
        resume=args.resume, callback=bars, tiny=args.tiny, config=config, views=views,
    ))
    if result is None:
        return EXIT_INTERRUPTED
    rec = result.record
    print(
        f"wrote {result.glb} ({rec['mesh']['faces']} faces, {rec['mesh']['texture_size']}px texture) in "
        f"{rec['timings_s']['total']:.0f}s; previews, input and run.json in {result.workdir}"
    )
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="one image to a textured GLB (the main job)")
    gen.add_argument("image", nargs="?", help="PNG, JPEG or WebP: a cut-out with alpha, or a photo on a plain background")
    gen.add_argument("--prompt", help="text to 3D instead of an image: Stable Diffusion draws candidates of the object")
    add_setting_flag(gen, "--candidates", "candidates.count",
                     "with --prompt: candidate images to draw (default 4; 2 with --tiny)")
    gen.add_argument("--pick", type=int, metavar="K", help="with --prompt: use candidate K (0-based) instead of the "
                     "first that mattes as one clean object")
    gen.add_argument("-o", "--out", required=True, help="the GLB to write")
    gen.add_argument("--view", dest="views", action="append", metavar="IMAGE@AZ[,POLAR]",
                     help="an extra photo of the object and where it was taken from, in degrees relative to the "
                     "main photo (azimuth 0): azimuth 90 = from the object's left (the side on the right of the "
                     "main photo), 180 = from behind, 270 = from its right; polar from straight above, 90 = level "
                     "(default: the main photo's). E.g. --view back.png@180 --view left.png@90,80 (repeatable, "
                     "up to 8; framed at the main photo's scale, or each on its own with "
                     "--set preprocess.view_framing=independent)")
    gen.add_argument("--preset", default="fast", choices=["paper", "fast", "draft"],
                     help="paper: the paper's budget; fast: minutes on one GPU (default); draft: a CPU smoke run")
    gen.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    gen.add_argument("--seed", type=int, help="same seed and device, same mesh (default 0, or the --config's)")
    add_set_option(gen, "override one setting, e.g. --set detail.sdf_lr=1e-3 or --set candidates.steps=20 "
                        "(repeatable; recorded in run.json)")
    gen.add_argument("--config", help="start from the configuration recorded in this run.json instead of --preset")
    gen.add_argument("--zero123", help="Zero-1-to-3 weights: hub id or local folder (diffusers layout)")
    gen.add_argument("--sd", help="Stable Diffusion 1.x weights: hub id or local folder (diffusers layout)")
    gen.add_argument("--embedding", help="a learned <e> embedding (.bin or .safetensors); skips textual inversion")
    gen.add_argument("--workdir", help="folder for checkpoints, previews and run.json (default: OUT.work beside the GLB)")
    gen.add_argument("--resume", action="store_true", help="continue the run in the work folder from its checkpoints")
    add_setting_flag(gen, "--faces", "export.target_faces",
                     "face budget of the exported mesh, quadric-decimated before the unwrap (default: the preset's, "
                     "50000 for paper, 20000 fast, 5000 draft; 0 keeps every face)", old_names=("--target-faces",))
    add_setting_flag(gen, "--texture-size", "export.texture_size",
                     "baked texture side in pixels (default: 2048 paper, 1024 fast, 256 draft)")
    gen.add_argument("--tiny", action="store_true",
                     help="tiny random models instead of real weights: exercises everything, makes noise")
    gen.set_defaults(func=cmd_generate)
