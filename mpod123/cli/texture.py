"""``mpod123 texture MESH PHOTO -o OUT.glb`` and ``mpod123 bench texture DATASET``.

``texture`` paints an existing mesh (any glTF/GLB/OBJ, any number of objects)
from a photo: see :mod:`mpod123.texturing.texturer`. ``--camera`` is ``front``
(default) or a JSON file (schema in :mod:`mpod123.texturing.camera_file`).
``bench texture`` textures a dataset's true mesh from its training views with
no prior and prints the held-out masked PSNR of the exported GLB.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_texture(args: argparse.Namespace) -> int:
    from .main import EXIT_INTERRUPTED, EXIT_OK, StageBars, run_resumable
    from ..config.overrides import run_config
    from ..pipeline.generate import ModelSources, default_workdir
    from ..texturing.camera_file import read_camera_file
    from ..texturing.texturer import texture

    camera = None if args.camera in (None, "front") else read_camera_file(args.camera)
    config = run_config(args.preset, args.seed, None, args.overrides or [])
    if args.texture_size is not None:
        if not 16 <= args.texture_size <= 8192:
            raise ValueError(f"--texture-size must be between 16 and 8192, got {args.texture_size}")
        config.export.texture_size = args.texture_size
    workdir = Path(args.workdir) if args.workdir else default_workdir(args.out)
    bars = StageBars()
    result = run_resumable(bars, workdir, lambda: texture(
        args.mesh, args.image, args.out, camera=camera, refine_geometry=args.refine_geometry, preset=config.preset,
        device=args.device, seed=config.seed, models=ModelSources(None, args.sd, args.embedding), workdir=workdir,
        resume=args.resume, callback=bars, tiny=args.tiny, config=config))
    if result is None:
        return EXIT_INTERRUPTED
    rec = result.record
    tex = rec["texture"]
    uv = "its own UVs" if tex["uv"] == "kept" else f"new UVs ({tex['uv_check']})"
    print(f"wrote {result.glb}: {rec['mesh']['faces']} faces, {rec['mesh']['texture_size']}px texture baked into {uv}, "
          f"in {rec['timings_s']['total']:.0f}s; run.json in {result.workdir}")
    return EXIT_OK


def _cmd_bench_texture(args: argparse.Namespace) -> int:
    from .main import EXIT_OK, ProgressPrinter, _device
    from ..bench.texture import bench_field_config, bench_texture, write_bench_report

    report = bench_texture(args.dataset_dir, args.holdout, steps=args.steps, resolution=args.res,
                           texture_size=args.texture_size, eval_resolution=args.eval_res, device=_device(args.device),
                           seed=args.seed, callback=ProgressPrinter(),
                           field_cfg=bench_field_config(args.levels, args.log2_table), lr=args.lr)
    path = write_bench_report(report, args.out) if args.out else None
    m = report.metrics
    print(f"texture: held-out masked PSNR {m['masked_psnr']:.2f} dB (baked GLB, {m['uv_backend']} UVs, "
          f"{m['texture_size']}px; {m['surface_psnr']:.2f} dB off the silhouette band), {m['field_psnr']:.2f} dB "
          f"before the bake, silhouette IoU {m['silhouette_iou']:.3f}; {m['steps']} steps in {m['seconds']:.1f}s"
          + (f"; wrote {path}" if path else ""))
    return EXIT_OK


def register(sub) -> None:
    tex = sub.add_parser("texture", help="texture an existing mesh (glTF/GLB/OBJ) from a photo")
    tex.add_argument("mesh", help="the mesh: .glb, .gltf or .obj, any number of objects")
    tex.add_argument("image", help="the photo: a cut-out with alpha, or a photo on a plain background")
    tex.add_argument("-o", "--out", required=True, help="the textured GLB to write")
    tex.add_argument("--camera", default="front",
                     help="'front' (default: the photo is the mesh's front view) or a JSON file with position, look_at "
                          "and fov_y_deg in the mesh's coordinates (and optionally up)")
    tex.add_argument("--refine-geometry", action="store_true", help="also let the vertices move a little")
    tex.add_argument("--preset", default="fast", choices=["paper", "fast", "draft"])
    tex.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    tex.add_argument("--seed", type=int)
    tex.add_argument("--set", dest="overrides", action="append", metavar="NAME=VALUE",
                     help="override one config field, e.g. --set detail.steps=500 (the texturing stage reads detail.*)")
    tex.add_argument("--texture-size", type=int, help="baked texture side in pixels (default: the preset's)")
    tex.add_argument("--sd", help="Stable Diffusion 1.x weights: hub id or local folder (diffusers layout)")
    tex.add_argument("--embedding", help="a learned <e> embedding; skips textual inversion")
    tex.add_argument("--workdir", help="folder for the checkpoint, previews and run.json (default: OUT.work)")
    tex.add_argument("--resume", action="store_true", help="continue the run in the work folder")
    tex.add_argument("--tiny", action="store_true", help="tiny random models: exercises everything, makes noise")
    tex.set_defaults(func=_cmd_texture)


def register_bench(bench) -> None:
    """``bench texture``: added to the ``bench`` group by :func:`mpod123.cli.main.build_parser`."""
    b = bench.add_parser("texture", help="texture a dataset's true mesh from its views; held-out PSNR of the GLB")
    b.add_argument("dataset_dir", help="a folder from `bench make-dataset` (transforms_train.json and mesh.obj/glb)")
    b.add_argument("--holdout", type=int, default=4, help="views held out for scoring (default 4)")
    b.add_argument("--steps", type=int, default=600, help="optimisation steps (default 600)")
    b.add_argument("--res", type=int, help="training render height (default: the dataset's)")
    b.add_argument("--eval-res", type=int, help="evaluation height (default: the dataset's)")
    b.add_argument("--texture-size", type=int, default=1024, help="baked texture side (default 1024)")
    b.add_argument("--levels", type=int, default=16, help="hash-grid levels of the texture field (default 16)")
    b.add_argument("--log2-table", type=int, default=17, help="log2 of the hash table size (default 17)")
    b.add_argument("--lr", type=float, help="the texture field's learning rate (default: texture's, "
                   "detail.fresh_texture_lr)")
    b.add_argument("--device", default="auto")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", help="folder for metrics.json and contact_sheet.png")
    b.set_defaults(func=_cmd_bench_texture)
