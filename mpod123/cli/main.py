"""Command line: ``mpod123 generate``, ``bench reconstruct | make-dataset``, and the commands of the
evaluation, batch and service packages (``serve``, ``keys``, ``client`` live in ``backend.commands``).

Exit codes: 0 success, 1 an unexpected failure, 2 bad usage or bad input (the
message says what to change), 130 interrupted (a checkpoint is kept where the
command writes one).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class ProgressPrinter:
    """A one-line-per-interval progress report on stderr, fed by stage events."""

    def __init__(self, every_s: float = 2.0, stream=None) -> None:
        self.every_s = every_s
        self.stream = stream or sys.stderr
        self._last = 0.0

    def __call__(self, event) -> None:
        from ..runtime.progress import Progress, StageDone

        now = time.monotonic()
        if isinstance(event, Progress) and (now - self._last >= self.every_s or event.step == event.total):
            self._last = now
            losses = " ".join(f"{k}={v:.4g}" for k, v in event.losses.items())
            eta = f" eta {event.eta_s:.0f}s" if event.eta_s is not None else ""
            print(f"[{event.stage}] {event.step}/{event.total} {losses}{eta}", file=self.stream, flush=True)
        elif isinstance(event, StageDone):
            print(f"[{event.stage}] done: {event.steps} steps in {event.seconds:.1f}s", file=self.stream, flush=True)


class StageBars:
    """One tqdm progress bar per stage (inversion, outline, detail), fed by stage events."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.bars: dict = {}

    def __call__(self, event) -> None:
        from tqdm import tqdm

        from ..runtime.progress import Progress, StageDone

        if isinstance(event, Progress):
            bar = self.bars.get(event.stage)
            if bar is None:
                bar = self.bars[event.stage] = tqdm(total=event.total, desc=event.stage, file=self.stream, unit="step",
                                                    dynamic_ncols=True, leave=True)
            bar.update(event.step - bar.n)
            if event.losses:
                bar.set_postfix({k: f"{v:.3g}" for k, v in list(event.losses.items())[:3]}, refresh=False)
        elif isinstance(event, StageDone):
            bar = self.bars.pop(event.stage, None)
            if bar is not None:
                bar.close()
            else:
                print(f"[{event.stage}] done in {event.seconds:.1f}s", file=self.stream, flush=True)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def generate_config(args: argparse.Namespace):
    """The preset's (or the recorded ``--config``'s) PipelineConfig with the seed, the ``--set``
    overrides, ``--faces`` and ``--texture-size`` applied."""
    from ..config.overrides import run_config

    config = run_config(args.preset, args.seed, args.config, args.overrides or [])
    if args.faces is not None:
        if 0 < args.faces < 4 or args.faces < 0:
            raise ValueError(f"--faces must be at least 4 (or 0 for the full mesh), got {args.faces}")
        config.export.target_faces = args.faces or None
    if args.texture_size is not None:
        if not 16 <= args.texture_size <= 8192:
            raise ValueError(f"--texture-size must be between 16 and 8192, got {args.texture_size}")
        config.export.texture_size = args.texture_size
    return config


def run_resumable(bars: StageBars, workdir: Path, work):
    """``work()`` with its progress bars closed however it ends; on Ctrl-C, None after saying how
    to continue (the stages checkpoint, so the same command with ``--resume`` picks up)."""
    try:
        return work()
    except KeyboardInterrupt:
        bars.close()
        print(f"mpod123: interrupted; continue with the same command and --resume (work folder {workdir})",
              file=sys.stderr)
        return None
    finally:
        bars.close()


def _cmd_generate(args: argparse.Namespace) -> int:
    from ..pipeline.generate import ModelSources, default_workdir, generate
    from ..pipeline.extra_views import parse_view_specs

    config = generate_config(args)
    views = parse_view_specs(args.views or [])
    bars = StageBars()
    workdir = Path(args.workdir) if args.workdir else default_workdir(args.out)
    if args.image is None or args.prompt is not None or args.candidates is not None or args.pick is not None:
        from ..pipeline.candidates import prompt_generate  # text to 3D: exactly one of IMAGE or --prompt

        generate = prompt_generate(args)
    result = run_resumable(bars, workdir, lambda: generate(
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


def _device(name: str) -> str:
    from ..runtime.devices import resolve_device

    return str(resolve_device(name))


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from ..config import ExportConfig, detail_preset, outline_preset
    from ..bench.dataset import read_dataset_mesh, read_nerf_synthetic
    from ..bench.reconstruct import reconstruct, write_report

    outline = outline_preset(args.preset)
    detail = detail_preset(args.preset) if args.stage == "detail" else None
    if args.steps is not None:
        outline.steps = args.steps
    if args.res is not None:
        outline.render.resolution = args.res
    if detail is not None:
        if args.detail_steps is not None:
            detail.steps = args.detail_steps
        if args.detail_res is not None:
            detail.resolution = args.detail_res
        if args.tet_res is not None:
            detail.dmtet.resolution = args.tet_res
        detail.seed, detail.preview_every = args.seed, 0
    outline.seed, outline.preview_every = args.seed, 0
    export = ExportConfig(texture_size=args.texture_size, uv_backend=args.uv, target_faces=args.target_faces)
    if args.overrides:  # --set outline.x=... / detail.x=... / export.x=..., validated like generate's
        from ..config import PipelineConfig
        from ..config.overrides import apply_overrides

        apply_overrides(PipelineConfig(outline=outline, detail=detail or detail_preset(args.preset), export=export),
                        args.overrides)
    dataset = read_nerf_synthetic(args.dataset_dir, split=args.split, scale=args.scale)
    report = reconstruct(
        dataset,
        args.holdout,
        outline,
        detail,
        export,
        out_dir=args.out,
        device=_device(args.device),
        callback=ProgressPrinter(),
        eval_resolution=args.eval_res,
        reference_mesh=read_dataset_mesh(args.dataset_dir, args.scale) if detail is not None else None,
    )
    metrics_path, sheet_path = write_report(report, args.out)
    m = report.metrics
    for stage in ("outline", "detail"):
        if stage in m:
            s = m[stage]
            print(
                f"{stage}: held-out silhouette IoU {s['silhouette_iou']:.4f}, masked PSNR {s['masked_psnr']:.2f} dB, "
                f"{s['steps']} steps in {s['seconds']:.1f}s"
                + (f", Chamfer {s['chamfer']:.4f}" if "chamfer" in s else "")
            )
    print(f"wrote {metrics_path} and {sheet_path}" + (" and mesh.glb" if "export" in m else ""))
    return EXIT_OK


def _cmd_make_dataset(args: argparse.Namespace) -> int:
    from ..bench.dataset import write_dataset_mesh, write_nerf_synthetic
    from ..bench.synthetic import object_mesh, turntable_dataset

    path = write_nerf_synthetic(args.out_dir, turntable_dataset(args.views, args.res), split=args.split)
    mesh_path = write_dataset_mesh(args.out_dir, object_mesh())
    print(f"wrote {args.views} views of the procedural test object to {path}, and its mesh to {mesh_path}")
    return EXIT_OK


def _cmd_make_photo(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from ..camera import orbit_cameras
    from ..bench.synthetic import render_object

    rgba = render_object(orbit_cameras(90.0, 0.0, 2.5, 40.0, args.size, args.size))[0].numpy()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(rgba, 0, 1) * 255 + 0.5).astype(np.uint8), "RGBA").save(out)
    print(f"wrote {out}: the procedural test object from the front, {args.size}px, with alpha")
    return EXIT_OK


COMMAND_MODULES = (
    "mpod123.cli.evaluation", "blender_batch.commands", "backend.commands", "mpod123.cli.setup",
    "mpod123.cli.preprocess", "mpod123.cli.texture",
)
"""Modules with a ``register(subparsers)`` that adds their commands."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mpod123", description="MPOD123: one image to a textured 3D asset")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="one image to a textured GLB (the main job)")
    gen.add_argument("image", nargs="?", help="PNG, JPEG or WebP: a cut-out with alpha, or a photo on a plain background")
    gen.add_argument("--prompt", help="text to 3D instead of an image: Stable Diffusion draws candidates of the object")
    gen.add_argument("--candidates", type=int, help="with --prompt: candidate images to draw (default 4; 2 with --tiny)")
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
    gen.add_argument("--set", dest="overrides", action="append", metavar="NAME=VALUE",
                     help="override one config field, e.g. --set detail.sdf_lr=1e-3 (repeatable; recorded in run.json)")
    gen.add_argument("--config", help="start from the configuration recorded in this run.json instead of --preset")
    gen.add_argument("--zero123", help="Zero-1-to-3 weights: hub id or local folder (diffusers layout)")
    gen.add_argument("--sd", help="Stable Diffusion 1.x weights: hub id or local folder (diffusers layout)")
    gen.add_argument("--embedding", help="a learned <e> embedding (.bin or .safetensors); skips textual inversion")
    gen.add_argument("--workdir", help="folder for checkpoints, previews and run.json (default: OUT.work beside the GLB)")
    gen.add_argument("--resume", action="store_true", help="continue the run in the work folder from its checkpoints")
    gen.add_argument("--faces", type=int, help="face budget of the exported mesh, quadric-decimated before the unwrap "
                     "(default: the preset's, 50000 for paper, 20000 fast, 5000 draft; 0 keeps every face)")
    gen.add_argument("--texture-size", type=int, help="baked texture side in pixels (default: 2048 paper, 1024 fast, 256 draft)")
    gen.add_argument("--tiny", action="store_true",
                     help="tiny random models instead of real weights: exercises everything, makes noise")
    gen.set_defaults(func=_cmd_generate)

    bench = sub.add_parser("bench", help="benchmarks that need no model weights").add_subparsers(dest="bench", required=True)

    rec = bench.add_parser("reconstruct", help="fit a stage from a multi-view dataset and score held-out views")
    rec.add_argument("dataset_dir", help="folder with transforms_<split>.json (NeRF-synthetic format)")
    rec.add_argument("--stage", default="outline", choices=["outline", "detail"], help="detail runs stage 1, then stage 2 and the export")
    rec.add_argument("--holdout", type=int, default=4, help="views held out for scoring (default 4)")
    rec.add_argument("--out", required=True, help="folder for metrics.json and contact_sheet.png")
    rec.add_argument("--steps", type=int, help="optimisation steps (default: the preset's)")
    rec.add_argument("--res", type=int, help="training render resolution (default: the preset's)")
    rec.add_argument("--eval-res", type=int, help="evaluation height in pixels (default: the dataset's)")
    rec.add_argument("--detail-steps", type=int, help="stage-2 steps (default: the preset's)")
    rec.add_argument("--detail-res", type=int, help="stage-2 render resolution (default: the preset's)")
    rec.add_argument("--tet-res", type=int, help="stage-2 tet grid cubes per side (default: the preset's)")
    rec.add_argument("--texture-size", type=int, default=512, help="baked texture size for the exported mesh")
    rec.add_argument("--uv", default="auto", choices=["auto", "xatlas", "torch"], help="UV unwrap backend")
    rec.add_argument("--target-faces", type=int, help="decimate the exported mesh to at most this many faces")
    rec.add_argument("--preset", default="draft", choices=["paper", "fast", "draft"])
    rec.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    rec.add_argument("--seed", type=int, default=0)
    rec.add_argument("--split", default="train", help="which transforms_<split>.json to read")
    rec.add_argument("--scale", type=float, default=1.0, help="scale camera positions into the unit sphere")
    rec.add_argument("--set", dest="overrides", action="append", metavar="NAME=VALUE",
                     help="override an outline.*, detail.* or export.* field, e.g. --set detail.dmtet.fit_to_density=false")
    rec.set_defaults(func=_cmd_reconstruct)

    mk = bench.add_parser("make-dataset", help="render the procedural test object as a NeRF-synthetic dataset")
    mk.add_argument("out_dir")
    mk.add_argument("--views", type=int, default=24)
    mk.add_argument("--res", type=int, default=64)
    mk.add_argument("--split", default="train")
    mk.set_defaults(func=_cmd_make_dataset)
    ph = bench.add_parser("make-photo", help="render the procedural test object as a cut-out PNG (an input for generate)")
    ph.add_argument("out")
    ph.add_argument("--size", type=int, default=512)
    ph.set_defaults(func=_cmd_make_photo)
    importlib.import_module("mpod123.cli.texture").register_bench(bench)

    for name in COMMAND_MODULES:  # larger command groups live beside the code they drive
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    errors: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)
    if args.command not in ("batch", "serve", "keys", "client"):  # these never need torch
        from ..bench.dataset import DatasetError
        from ..stages import CheckpointError
        from ..pipeline.runner import RunError

        errors += (DatasetError, CheckpointError, RunError)
    warnings.filterwarnings("once")
    try:
        return args.func(args)
    except errors as exc:
        print(f"mpod123: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("mpod123: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # anything else is a failure of ours: say so, with the details
        import traceback

        traceback.print_exc()
        print(f"mpod123: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
