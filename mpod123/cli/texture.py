"""``mpod123 texture MESH PHOTO -o OUT.glb``.

``texture`` paints an existing mesh (any glTF/GLB/OBJ, any number of objects)
from a photo: see :mod:`mpod123.texturing.texturer`. ``--camera`` is ``front``
(default) or a JSON file (schema in :mod:`mpod123.texturing.camera_file`).
``--texture-size`` is ``--set export.texture_size``. (``bench texture`` is in :mod:`mpod123.cli.bench`.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import EXIT_INTERRUPTED, EXIT_OK, StageBars, add_set_option, add_setting_flag, run_resumable, setting_labels


def cmd_texture(args: argparse.Namespace) -> int:
    from ..config.overrides import run_config
    from ..pipeline.generate import ModelSources, default_workdir
    from ..texturing.camera_file import read_camera_file
    from ..texturing.texturer import texture

    camera = None if args.camera in (None, "front") else read_camera_file(args.camera)
    config = run_config(args.preset, args.seed, None, args.overrides or [], setting_labels(args))
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
    add_set_option(tex, "override one setting, e.g. --set detail.steps=500 (the texturing stage reads detail.*)")
    add_setting_flag(tex, "--texture-size", "export.texture_size", "baked texture side in pixels (default: the preset's)")
    tex.add_argument("--sd", help="Stable Diffusion 1.x weights: hub id or local folder (diffusers layout)")
    tex.add_argument("--embedding", help="a learned <e> embedding; skips textual inversion")
    tex.add_argument("--workdir", help="folder for the checkpoint, previews and run.json (default: OUT.work)")
    tex.add_argument("--resume", action="store_true", help="continue the run in the work folder")
    tex.add_argument("--tiny", action="store_true", help="tiny random models: exercises everything, makes noise")
    tex.set_defaults(func=cmd_texture)
