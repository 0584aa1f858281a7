"""``mpod123 bench reconstruct | make-dataset | make-photo | texture``: benchmarks that need no model weights.

``reconstruct`` fits a stage from a multi-view dataset and scores held-out views
(:mod:`mpod123.bench.reconstruct`); ``make-dataset`` and ``make-photo`` render the procedural test
object (:mod:`mpod123.bench.synthetic`); ``texture`` textures a dataset's true mesh from its training
views with no prior and prints the held-out masked PSNR of the exported GLB (:mod:`mpod123.bench.texture`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import EXIT_OK, ProgressPrinter, add_set_option, add_setting_flag, setting_labels
from .device import device


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from ..bench.dataset import read_dataset_mesh, read_nerf_synthetic
    from ..bench.reconstruct import reconstruct, write_report
    from ..config import ExportConfig, PipelineConfig, detail_preset, outline_preset
    from ..config.overrides import apply_overrides

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
    export = ExportConfig(texture_size=512, uv_backend=args.uv, target_faces=None)
    # --set outline.x=... / detail.x=... / export.x=..., checked like generate's (the flags that are settings too)
    apply_overrides(PipelineConfig(outline=outline, detail=detail or detail_preset(args.preset), export=export),
                    args.overrides or [], setting_labels(args))
    dataset = read_nerf_synthetic(args.dataset_dir, split=args.split, scale=args.scale)
    report = reconstruct(
        dataset,
        args.holdout,
        outline,
        detail,
        export,
        out_dir=args.out,
        device=device(args.device),
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


def cmd_make_dataset(args: argparse.Namespace) -> int:
    from ..bench.dataset import write_dataset_mesh, write_nerf_synthetic
    from ..bench.synthetic import object_mesh, turntable_dataset

    path = write_nerf_synthetic(args.out_dir, turntable_dataset(args.views, args.res), split=args.split)
    mesh_path = write_dataset_mesh(args.out_dir, object_mesh())
    print(f"wrote {args.views} views of the procedural test object to {path}, and its mesh to {mesh_path}")
    return EXIT_OK


def cmd_make_photo(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from ..bench.synthetic import render_object
    from ..camera import orbit_cameras

    rgba = render_object(orbit_cameras(90.0, 0.0, 2.5, 40.0, args.size, args.size))[0].numpy()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(rgba, 0, 1) * 255 + 0.5).astype(np.uint8), "RGBA").save(out)
    print(f"wrote {out}: the procedural test object from the front, {args.size}px, with alpha")
    return EXIT_OK


def cmd_bench_texture(args: argparse.Namespace) -> int:
    from ..bench.texture import bench_field_config, bench_texture, write_bench_report

    report = bench_texture(args.dataset_dir, args.holdout, steps=args.steps, resolution=args.res,
                           texture_size=args.texture_size, eval_resolution=args.eval_res, device=device(args.device),
                           seed=args.seed, callback=ProgressPrinter(),
                           field_cfg=bench_field_config(args.levels, args.log2_table), lr=args.lr)
    path = write_bench_report(report, args.out) if args.out else None
    m = report.metrics
    print(f"texture: held-out masked PSNR {m['masked_psnr']:.2f} dB (baked GLB, {m['uv_backend']} UVs, "
          f"{m['texture_size']}px; {m['surface_psnr']:.2f} dB off the silhouette band), {m['field_psnr']:.2f} dB "
          f"before the bake, silhouette IoU {m['silhouette_iou']:.3f}; {m['steps']} steps in {m['seconds']:.1f}s"
          + (f"; wrote {path}" if path else ""))
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
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
    add_setting_flag(rec, "--texture-size", "export.texture_size", "baked texture size for the exported mesh (default 512)")
    rec.add_argument("--uv", default="auto", choices=["auto", "xatlas", "torch"], help="UV unwrap backend")
    add_setting_flag(rec, "--faces", "export.target_faces",
                     "decimate the exported mesh to at most this many faces (default: 0, every face)",
                     old_names=("--target-faces",))
    rec.add_argument("--preset", default="draft", choices=["paper", "fast", "draft"])
    rec.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    rec.add_argument("--seed", type=int, default=0)
    rec.add_argument("--split", default="train", help="which transforms_<split>.json to read")
    rec.add_argument("--scale", type=float, default=1.0, help="scale camera positions into the unit sphere")
    add_set_option(rec, "override an outline.*, detail.* or export.* setting, e.g. "
                        "--set detail.dmtet.fit_to_density=false (repeatable)")
    rec.set_defaults(func=cmd_reconstruct)

    mk = bench.add_parser("make-dataset", help="render the procedural test object as a NeRF-synthetic dataset")
    mk.add_argument("out_dir")
    mk.add_argument("--views", type=int, default=24)
    mk.add_argument("--res", type=int, default=64)
    mk.add_argument("--split", default="train")
    mk.set_defaults(func=cmd_make_dataset)

    ph = bench.add_parser("make-photo", help="render the procedural test object as a cut-out PNG (an input for generate)")
    ph.add_argument("out")
    ph.add_argument("--size", type=int, default=512)
    ph.set_defaults(func=cmd_make_photo)

    b = bench.add_parser("texture", help="texture a dataset's true mesh from its views; held-out PSNR of the GLB")
    b.add_argument("dataset_dir", help="a folder from `bench make-dataset` (transforms_train.json and mesh.obj/glb)")
    b.add_argument("--holdout", type=int, default=4, help="views held out for scoring (default 4)")
    b.add_argument("--steps", type=int, default=600, help="optimisation steps (default 600)")
    b.add_argument("--res", type=int, help="training render height (default: the dataset's)")
    b.add_argument("--eval-res", type=int, help="evaluation height (default: the dataset's)")
    b.add_argument("--texture-size", type=int, default=1024, help="baked texture side (default 1024)")
    b.add_argument("--levels", type=int, default=16, help="hash-grid levels of the texture field (default 16)")
    b.add_argument("--log2-table", type=int, default=17, help="log2 of the hash table size (default 17)")
    b.add_argument("--device", default="auto")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", help="folder for metrics.json and contact_sheet.png")
    b.add_argument("--lr", type=float, help="the texture field's learning rate (default: texture's, "
                   "detail.fresh_texture_lr)")
    b.set_defaults(func=cmd_bench_texture)
