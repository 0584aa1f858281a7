"""Evaluation cost: the textured turntable render and each metric, at the paper's 512² by default.

The networks have the real sizes with random weights (VGG19 to relu5_4; a CLIP
ViT-L/14 image tower), so the timings are those of a real ``mpod123 eval``
without needing the weights. The mesh is the procedural test object exported
as a GLB (torch UV atlas).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from common import machine, median_seconds, parser, quiet, report

from mpod123.config import ExportConfig
from mpod123.evaluation.config import EvalConfig
from mpod123.evaluation.contextual import contextual_score
from mpod123.evaluation.textured_mesh import load_glb
from mpod123.evaluation.turntable import render_turntable
from mpod123.evaluation.vgg import VGG19Features
from mpod123.export import export_mesh
from mpod123.imaging.metrics import ssim
from mpod123.bench.synthetic import object_albedo, object_mesh


def _vit_l14(device: str):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14, projection_dim=768)
    return CLIPVisionModelWithProjection(cfg).to(device).eval()


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--res", type=int, default=512)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--mesh-res", type=int, default=96, help="tet grid of the procedural object's mesh")
    p.add_argument("--texture", type=int, default=1024)
    p.add_argument("--no-clip", action="store_true", help="skip the ViT-L/14 timing (it needs about 1.2 GB)")
    args = p.parse_args()
    quiet()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        glb = Path(tmp) / "object.glb"
        t0 = time.perf_counter()
        export = export_mesh(object_mesh(args.mesh_res), object_albedo, glb,
                             ExportConfig(texture_size=args.texture, uv_backend="torch", obj=False))
        export_s = time.perf_counter() - t0
        mesh = load_glb(glb)
    cfg = EvalConfig(views=args.views, resolution=args.res)
    table = render_turntable(mesh, cfg, args.device)
    render_s = median_seconds(lambda: render_turntable(mesh, cfg, args.device), args.device, args.repeats)
    view0, views = table.rgb[0], table.rgb
    ssim_s = median_seconds(lambda: ssim(view0, view0), args.device, args.repeats)
    vgg = VGG19Features().to(args.device).eval()
    with torch.no_grad():
        ref_feat = vgg(view0[None])[0]
        vgg_s = median_seconds(lambda: vgg(view0[None]), args.device, args.repeats)
        cx_s = median_seconds(lambda: contextual_score(ref_feat, ref_feat), args.device, args.repeats)
    rows = {
        "faces": export.n_faces,
        "texture": args.texture,
        "views": args.views,
        "resolution": args.res,
        "export_s": export_s,
        "turntable_render_s": render_s,
        "render_per_view_ms": 1000 * render_s / args.views,
        "ssim_ms": 1000 * ssim_s,
        "vgg19_relu5_4_per_view_ms": 1000 * vgg_s,
        "relu5_4_positions": int(ref_feat.shape[1] * ref_feat.shape[2]),
        "cx_per_view_ms": 1000 * cx_s,
    }
    if not args.no_clip:
        from mpod123.evaluation.clip_score import clip_preprocess

        clip = _vit_l14(args.device)
        with torch.no_grad():
            x = clip_preprocess(views, 224).to(args.device)
            clip_s = median_seconds(lambda: clip(pixel_values=x), args.device, args.repeats)
        rows["clip_vit_l14_per_view_ms"] = 1000 * clip_s / args.views
    per_view = rows["render_per_view_ms"] + rows["vgg19_relu5_4_per_view_ms"] + rows["cx_per_view_ms"]
    per_view += rows.get("clip_vit_l14_per_view_ms", 0.0)
    rows["estimated_eval_24_views_s"] = 24 * per_view / 1000
    report("eval", {"benchmark": "eval", "machine": machine(args.device), "results": rows}, args.out)


if __name__ == "__main__":
    main()
