"""One SDS step of each diffusion prior at the real models' sizes, with random weights.

Random weights have the FLOPs and memory of the real ones (SD 1.5's UNet, VAE
and text encoder; Zero123-XL's 8-channel UNet and CLIP ViT-L/14 image encoder),
are saved in the diffusers layout and loaded through the production
``from_pretrained`` path. Timed, per step, forward and backward:

* ``zero123``: a 128² render of the stage-1 batch (the paper's stage-1 size),
  resized to Zero123's 256² -> VAE encode -> one CFG UNet call -> the SDS
  gradient back into the render.
* ``dai``: a 1024² render resized to 512² -> the same with Stable Diffusion and
  MRCA on every cross-attention layer (a real, partly zero mask).
* ``inversion``: one textual-inversion step (text encoder + UNet forward and
  backward into the `<e>` vector), from cached augmentation latents.

Output: milliseconds per step (median) and peak GPU memory per prior. Refuses
to run on the CPU, where real sizes take minutes a step; ``--tiny --allow-cpu``
runs the same code on tiny models as a smoke test.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from common import machine, parser, quiet, report, step_seconds
from mpod123.camera import orbit_cameras
from mpod123.config import StableDiffusionConfig, TextualInversionConfig, Zero123Config
from mpod123.guidance import GuidanceInput
from mpod123.guidance.stable_diffusion import StableDiffusionGuidance, load_stable_diffusion
from mpod123.guidance.textual_inversion import TextualInversion, add_token
from mpod123.guidance.zero123 import Zero123Guidance
from mpod123.runtime.tiny_models import FULL, TINY, save_tiny_stable_diffusion, save_tiny_zero123


def _peak(device: str, fn) -> tuple[list[float], float | None]:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = fn()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return times, peak


def _row(name: str, times: list[float], peak: float | None, **extra) -> dict:
    return {"prior": name, "ms_per_step_median": round(1000 * times[len(times) // 2], 2),
            "ms_per_step_min": round(1000 * times[0], 2), "peak_gpu_gb": None if peak is None else round(peak, 3), **extra}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=1, help="views per SDS step")
    p.add_argument("--tiny", action="store_true", help="tiny models (smoke test)")
    p.add_argument("--allow-cpu", action="store_true", help="run on the CPU anyway (with --tiny)")
    p.add_argument("--models", help="folder to keep the random models in (default: a temporary folder)")
    args = p.parse_args()
    if not args.device.startswith("cuda") and not args.allow_cpu:
        sys.exit("bench_guidance_gpu: needs a CUDA device (real model sizes take minutes a step on the CPU); "
                 "use --tiny --allow-cpu for a smoke test")
    quiet()
    size = TINY if args.tiny else FULL
    dtype = None if args.tiny else torch.float16
    root = Path(args.models or tempfile.mkdtemp(prefix="mpod123-bench-models-"))
    if not (root / "zero123" / "model_index.json").is_file():
        save_tiny_zero123(root / "zero123", size=size, dtype=dtype)
    if not (root / "sd" / "model_index.json").is_file():
        save_tiny_stable_diffusion(root / "sd", size=size, dtype=dtype)
    dev, b = args.device, args.batch
    rows = []

    # ---- Zero123 SDS: 128² renders (stage 1's size in the paper), resized to the model's 256²
    ref = torch.rand(256, 256, 3)
    z = Zero123Guidance(Zero123Config(model=str(root / "zero123")), ref, orbit_cameras(90.0, 0.0), device=dev)
    cams = orbit_cameras(70.0, [30.0 * i for i in range(b)], 2.5, 40.0, 128)
    render = torch.rand(b, 128, 128, 3, device=dev, requires_grad=True)

    def zero123_step() -> None:
        z(GuidanceInput(render, torch.ones(b, 128, 128, 1, device=dev), cams, torch.ones(b, 3, device=dev), 7, 100))[
            "sds_zero123"].backward()

    zero123_step()
    rows.append(_row("zero123", *_peak(dev, lambda: step_seconds(zero123_step, dev, args.steps)),
                     render=128, model_size=z.image_size, dtype=str(z.dtype)))
    z = None  # free the Zero123 models before loading SD
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()

    # ---- DAI: SD at 512² from a 1024² render, MRCA on
    models = load_stable_diffusion(str(root / "sd"), dev)
    ti = TextualInversion(TextualInversionConfig(batch_size=4 if not args.tiny else 1, augmentations=8), models)
    rgba = torch.zeros(256, 256, 4)
    rgba[64:192, 48:208] = torch.tensor([0.8, 0.3, 0.2, 1.0])
    ti.encode_pool(rgba)
    opt = ti.optimizer()
    gen = torch.Generator().manual_seed(0)
    ti.step(ti.draw(gen), opt)
    rows.append(_row("inversion", *_peak(dev, lambda: step_seconds(lambda: ti.step(ti.draw(gen), opt), dev, args.steps)),
                     batch=ti.cfg.batch_size, resolution=ti.cfg.resolution or models.native_size))
    ti.close()
    add_token(models, "<e>", ti.vector.detach())
    dai = StableDiffusionGuidance(StableDiffusionConfig(model=str(root / "sd")), models)
    side = 1024 if not args.tiny else 64
    render2 = torch.rand(b, side, side, 3, device=dev, requires_grad=True)
    masks = torch.ones(b, side, side, 1, device=dev)
    masks[:, :, : side // 4] = 0.0

    def dai_step() -> None:
        dai(GuidanceInput(render2, torch.ones_like(masks), cams, torch.ones(b, 3, device=dev), 7, 100, None, masks))[
            "sds_dai"].backward()

    dai_step()
    rows.append(_row("dai", *_peak(dev, lambda: step_seconds(dai_step, dev, args.steps)), render=side,
                     model_size=dai.image_size, mrca_layers=len(dai.mrca_layers), dtype=str(models.dtype)))
    dai.close()
    report("guidance_gpu" if not args.tiny else "guidance_tiny",
           {"benchmark": "guidance_gpu", "sizes": "tiny" if args.tiny else "real (random weights)", "batch": b,
            "steps": args.steps, "machine": machine(dev), "rows": rows}, args.out)


if __name__ == "__main__":
    main()
