"""``mpod123 eval`` and ``mpod123 eval-set``: score results against their inputs (:mod:`mpod123.evaluation`).

Exit codes: 0 scored (missing CLIP or VGG weights only mark those metrics
unavailable), 1 a failure (in ``eval-set``: some object failed), 2 bad input
(raised as :class:`~mpod123.runtime.errors.Mpod123Error`, which ``mpod123.cli.common.run_command`` maps to 2).
torch and transformers are imported inside the command functions only.
"""

from __future__ import annotations

import argparse
import sys

from ..evaluation.config import DEFAULT_CLIP, AlignConfig, EvalConfig
from .common import EXIT_FAILURE, EXIT_OK


def _add_eval_options(p: argparse.ArgumentParser) -> None:
    d = EvalConfig()
    p.add_argument("--views", type=int, default=d.views, help=f"turntable views, view 0 at the reference (default {d.views})")
    p.add_argument("--res", type=int, default=d.resolution, help=f"render side in pixels (default {d.resolution}, as the paper)")
    p.add_argument("--clip", default=DEFAULT_CLIP,
                   help="CLIP backbone: hub id (from the local cache) or local folder (default %(default)s)")
    p.add_argument("--vgg", help="VGG19 weights for CX: torchvision's vgg19 .pth or a .safetensors with its names "
                                 "(default: torch's hub checkpoint folder)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--polar", type=float, default=d.polar_deg, help="reference polar angle from +Y in degrees (default 90)")
    p.add_argument("--radius", type=float, default=d.radius, help="camera distance, as in generation (default 2.5)")
    p.add_argument("--fov", type=float, default=d.fov_deg, help="vertical field of view in degrees (default 40)")
    p.add_argument("--no-frame", action="store_true",
                   help="use the reference as it is (already a render from the reference camera) instead of framing "
                        "it as the pipeline does")
    p.add_argument("--no-view-pngs", action="store_true", help="skip writing each view as views/view_NNN.png")
    p.add_argument("--no-align", action="store_true",
                   help="score the mesh in the frame it comes in (default: scale and translate it onto the reference's "
                        "silhouette first, as another tool's mesh needs; the transform is in metrics.json)")


def _config(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(
        views=args.views, resolution=args.res, polar_deg=args.polar, radius=args.radius, fov_deg=args.fov,
        frame_reference=not args.no_frame, clip_model=args.clip, vgg_weights=args.vgg, device=args.device,
        save_views=not args.no_view_pngs, align=AlignConfig(enabled=not args.no_align),
    )


def _cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluation.report import evaluate, summary_line, write_report

    cfg = _config(args)
    report = evaluate(args.result, args.reference, cfg)
    metrics_path, sheet_path = write_report(report, args.out, cfg.save_views)
    for metric, reason in sorted(report.metrics["unavailable"].items()):
        print(f"mpod123 eval: {metric.upper()} unavailable: {reason}", file=sys.stderr)
    print(summary_line(report))
    for note in report.metrics["notes"]:
        if "alignment" in note:
            print(f"mpod123 eval: {note}", file=sys.stderr)
    print(f"{cfg.views} views at {cfg.resolution}px, CLIP {cfg.clip_model}; wrote {metrics_path} and {sheet_path}")
    return EXIT_OK


def _cmd_eval_set(args: argparse.Namespace) -> int:
    from ..evaluation.suite import evaluate_set, format_table

    cfg = _config(args)
    models = None
    if args.zero123 or args.sd or args.embedding:
        from ..pipeline.generate import ModelSources

        models = ModelSources(args.zero123, args.sd, args.embedding)
    result = evaluate_set(
        args.folder, args.out, cfg, preset=args.preset, seed=args.seed, device=args.device, models=models,
        resume=args.resume, keep_existing=args.keep_existing, generate_kwargs={"tiny": True} if args.tiny else None,
    )
    print(format_table(result), end="")
    print(f"wrote {args.out}/table.md and {args.out}/summary.json")
    return EXIT_FAILURE if result.failed else EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add this package's commands to the ``mpod123`` parser."""
    ev = sub.add_parser("eval", help="score a result GLB against its input: CX, CLIP, MVC, PSNR, SSIM, IoU")
    ev.add_argument("result", help="the GLB to score")
    ev.add_argument("--reference", required=True, help="the input image it was generated from")
    ev.add_argument("--out", required=True, help="folder for metrics.json, contact_sheet.png and views/")
    _add_eval_options(ev)
    ev.set_defaults(func=_cmd_eval)

    es = sub.add_parser("eval-set", help="generate and score a folder of inputs; print the paper's table")
    es.add_argument("folder", help="one folder per object (rgba.png, image_rgba.png or image.png + mask.png), "
                                   "or images directly in the folder")
    es.add_argument("--out", required=True, help="folder for each object's GLB and scores, table.md, summary.json")
    es.add_argument("--preset", default="fast", choices=["paper", "fast", "draft"], help="generation preset")
    es.add_argument("--seed", type=int, default=0)
    es.add_argument("--zero123", help="Zero-1-to-3 weights: hub id or local folder")
    es.add_argument("--sd", help="Stable Diffusion 1.x weights: hub id or local folder")
    es.add_argument("--embedding", help="a learned <e> embedding file (skips textual inversion)")
    es.add_argument("--tiny", action="store_true", help="tiny random generation models (a smoke run; scores are noise)")
    es.add_argument("--resume", action="store_true", help="continue each object's run from its work folder")
    es.add_argument("--keep-existing", action="store_true",
                    help="score a result.glb already in OUT/<name>/ instead of generating it again")
    _add_eval_options(es)
    es.set_defaults(func=_cmd_eval_set)
