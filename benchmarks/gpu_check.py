"""Everything only a GPU can tell, in one command and one JSON report (at most about 10 minutes).

With weights of the real sizes (random, made here: no hub), on a CUDA device:

* ``inversion_gradient``: the textual-inversion gradient of `<e>` in fp16 without and with the
  constant loss scale, against fp32 (cosine, share of zero entries). The CPU tests run fp32 and
  cannot see fp16 underflow.
* ``sds``: one Zero123 and one Stable Diffusion (DAI, MRCA on) SDS step per dtype (fp16, fp32):
  time, peak memory, and whether the gradient reaching the render is finite.
* ``parity``: the CUDA parity tests (torch twins against tinycudann, nerfacc, kaolin, nvdiffrast
  when importable), run with pytest; their summary line.
* ``pipeline``: ``pipeline_gpu.py`` for the ``fast`` and ``paper`` presets: per-step times per stage
  and extrapolated totals.

It refuses a CPU with a clear message; ``--smoke`` runs the same code on tiny models on the CPU
(what the test suite does). Figures go into docs/benchmarks.md with the device name.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import machine, parser, quiet, report
from mpod123.camera import orbit_cameras
from mpod123.config import StableDiffusionConfig, TextualInversionConfig, Zero123Config
from mpod123.guidance import GuidanceInput
from mpod123.runtime.tiny_models import FULL, TINY, save_tiny_stable_diffusion, save_tiny_zero123

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PARITY_TESTS = ["tests/mpod123/fields/test_hash_grid.py", "tests/mpod123/rendering/test_rendering.py", "tests/mpod123/geometry/test_geometry.py", "tests/mpod123/rendering/test_rasterizer.py"]


def _peak_reset(dev: str) -> None:
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak(dev: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if dev.startswith("cuda") else None


def _sync(dev: str) -> None:
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def inversion_gradient(sd_dir: Path, dev: str, resolution: int | None) -> dict:
    """Gradient of `<e>` for one batch in fp32, fp16 unscaled and fp16 with the loss scale."""
    from mpod123.guidance.stable_diffusion import load_stable_diffusion
    from mpod123.guidance.textual_inversion import TextualInversion

    ref = torch.zeros(256, 256, 4)
    ref[64:192, 48:208] = torch.tensor([0.8, 0.3, 0.2, 1.0])
    grads, zeros = {}, {}
    for name, dtype, scale in (("fp32", "float32", None), ("fp16_unscaled", "float16", 1.0), ("fp16_scaled", "float16", None)):
        models = load_stable_diffusion(str(sd_dir), dev, dtype)
        ti = TextualInversion(TextualInversionConfig(batch_size=4, augmentations=4, resolution=resolution, loss_scale=scale), models)
        ti.encode_pool(ref)
        ti.step(ti.draw(torch.Generator().manual_seed(0)), ti.optimizer())
        g = ti.vector.grad.detach().float().cpu() / ti.loss_scale
        grads[name], zeros[name] = g, float((g == 0).float().mean())
        ti.close()
        del ti, models
        _peak_reset(dev)
    cos = lambda a, b: float(torch.nn.functional.cosine_similarity(a, b, dim=0))  # noqa: E731
    return {
        "cosine_fp16_unscaled_vs_fp32": round(cos(grads["fp16_unscaled"], grads["fp32"]), 5),
        "cosine_fp16_scaled_vs_fp32": round(cos(grads["fp16_scaled"], grads["fp32"]), 5),
        "zero_fraction": {k: round(v, 4) for k, v in zeros.items()},
        "grad_norm_fp32": float(grads["fp32"].norm()),
    }


def sds_steps(root: Path, dev: str, smoke: bool) -> list[dict]:
    """One timed SDS step per prior and dtype, after one warm-up step. Renders are 128² for Zero123
    and 1024² for Stable Diffusion; in a smoke run each model's own size (fp16 resizes need CUDA)."""
    from mpod123.guidance.stable_diffusion import StableDiffusionGuidance, load_stable_diffusion
    from mpod123.guidance.textual_inversion import add_token
    from mpod123.guidance.zero123 import Zero123Guidance

    rows = []
    for dtype in ("float16", "float32"):
        _peak_reset(dev)
        z = Zero123Guidance(Zero123Config(model=str(root / "zero123"), dtype=dtype), torch.rand(256, 256, 3),
                            orbit_cameras(90.0, 0.0), device=dev)
        r = z.image_size if smoke else 128
        cams = orbit_cameras(70.0, 30.0, 2.5, 40.0, r)
        render = torch.rand(1, r, r, 3, device=dev, requires_grad=True)
        times = []
        for _ in range(2):
            render.grad = None
            _sync(dev)
            t0 = time.perf_counter()
            z(GuidanceInput(render, torch.ones(1, r, r, 1, device=dev), cams, torch.ones(1, 3, device=dev), 7, 100))[
                "sds_zero123"].backward()
            _sync(dev)
            times.append(time.perf_counter() - t0)
        rows.append({"prior": "zero123", "dtype": dtype, "seconds": round(times[-1], 4), "peak_gpu_gb": _peak(dev),
                     "finite_grad": bool(torch.isfinite(render.grad).all()), "grad_abs_max": float(render.grad.abs().max())})
        del z
        _peak_reset(dev)
        models = load_stable_diffusion(str(root / "sd"), dev, dtype)
        add_token(models, "<e>")
        dai = StableDiffusionGuidance(StableDiffusionConfig(model=str(root / "sd"), dtype=dtype), models)
        side = dai.image_size if smoke else 1024
        render2 = torch.rand(1, side, side, 3, device=dev, requires_grad=True)
        masks = torch.ones(1, side, side, 1, device=dev)
        masks[:, :, : side // 4] = 0.0
        times = []
        for _ in range(2):
            render2.grad = None
            _sync(dev)
            t0 = time.perf_counter()
            dai(GuidanceInput(render2, torch.ones_like(masks), cams, torch.ones(1, 3, device=dev), 7, 100, None, masks))[
                "sds_dai"].backward()
            _sync(dev)
            times.append(time.perf_counter() - t0)
        rows.append({"prior": "stable_diffusion_dai", "dtype": dtype, "render": side, "seconds": round(times[-1], 4),
                     "peak_gpu_gb": _peak(dev), "finite_grad": bool(torch.isfinite(render2.grad).all()),
                     "grad_abs_max": float(render2.grad.abs().max())})
        dai.close()
        del dai, models
    return rows


def _run(cmd: list[str], timeout: float) -> tuple[int, str]:
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(10.0, timeout))
        return done.returncode, (done.stdout + done.stderr)[-4000:]
    except subprocess.TimeoutExpired as exc:
        return 124, f"timed out after {exc.timeout:.0f}s"


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--smoke", action="store_true", help="tiny models, on the CPU if there is no GPU (a smoke test)")
    p.add_argument("--budget", type=float, default=600.0, help="seconds for the whole check")
    p.add_argument("--models", help="folder to keep the random models in (default: a temporary folder)")
    p.add_argument("--pipeline-steps", type=int, default=30, help="steps per stage run by the pipeline timing")
    args = p.parse_args()
    if not args.device.startswith("cuda") and not args.smoke:
        sys.exit("gpu_check: no CUDA device here. It measures what only a GPU can tell (fp16 gradients, SDS "
                 "memory, accelerator parity, per-step times at real sizes); run it on the GPU machine, or "
                 "pass --smoke to run it on tiny models here as a smoke test")
    quiet()
    start = time.perf_counter()
    left = lambda: args.budget - (time.perf_counter() - start)  # noqa: E731
    size, dtype = (TINY, None) if args.smoke else (FULL, torch.float16)  # stored in fp16, loaded in either
    root = Path(args.models or tempfile.mkdtemp(prefix="mpod123-gpu-check-"))
    if not (root / "zero123" / "model_index.json").is_file():
        save_tiny_zero123(root / "zero123", size=size, dtype=dtype)
    if not (root / "sd" / "model_index.json").is_file():
        save_tiny_stable_diffusion(root / "sd", size=size, dtype=dtype)
    record: dict = {"benchmark": "gpu_check", "sizes": "tiny" if args.smoke else "real (random weights)",
                    "machine": machine(args.device)}
    dev = args.device
    t0 = time.perf_counter()
    record["inversion_gradient"] = inversion_gradient(root / "sd", dev, 32 if args.smoke else None)
    record["inversion_gradient"]["seconds"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    record["sds"] = sds_steps(root, dev, args.smoke)
    record["sds_seconds"] = round(time.perf_counter() - t0, 1)
    if dev.startswith("cuda"):
        rc, tail = _run([sys.executable, "-m", "pytest", "-q", "-rs", *PARITY_TESTS, "-k",
                         "cuda or tcnn or nerfacc or kaolin or nvdiffrast"], min(180.0, left() * 0.4))
        record["parity"] = {"returncode": rc, "summary": tail.strip().splitlines()[-1] if tail.strip() else "", "tail": tail}
    else:
        record["parity"] = {"skipped": "no CUDA device: the parity tests skip"}
    pipe_out = root / "pipeline.json"
    cmd = [sys.executable, str(HERE / "pipeline_gpu.py"), "--device", dev, "--steps", str(args.pipeline_steps),
           "--warmup", str(min(10, args.pipeline_steps // 3)), "--models", str(root), "--out", str(pipe_out)]
    if args.smoke:
        cmd += ["--tiny", "--allow-cpu", "--presets", "draft"]
    rc, tail = _run(cmd, left() - 5)
    record["pipeline"] = json.loads(pipe_out.read_text()) if rc == 0 and pipe_out.is_file() else {"returncode": rc, "tail": tail}
    record["seconds"] = round(time.perf_counter() - start, 1)
    report("gpu_check" if not args.smoke else "gpu_check_smoke", record, args.out)


if __name__ == "__main__":
    main()
