"""Everything only a GPU can tell, in one command, one JSON report written step by step, and an
exit code that cannot be green by accident.

Steps, each written to the JSON report as soon as it ends (atomically: a kill leaves the
finished steps on disk):

* ``extensions``: stale torch extension locks cleared (a killed compile leaves one, and every
  later load waits on it forever), then every installed accelerator imported and, on CUDA, its
  compiled extension built or loaded, with no time cap (nerfacc compiles on first use).
* ``accelerators``: per accelerator (tcnn, nerfacc, kaolin, nvdiffrast) a verdict, ``pass``,
  ``fail``, ``not installed`` or ``unusable`` (installed, but no CUDA here), with the reason,
  and its own parity tests counted passed / failed / skipped (``gpu_accelerators.py``).
* ``inversion_gradient``: the textual-inversion gradient of `<e>` in fp16 without and with the
  constant loss scale, against fp32: cosine, share of zero entries, non-finite entries.
* ``sds``: one Zero123 and one Stable Diffusion (DAI, MRCA on) SDS step per dtype on the same
  render and draw: time, peak memory, non-finite entries of the UNet output, of the SDS
  gradient before ``sds_loss``'s ``nan_to_num`` and of the render's gradient, and the fp16
  gradient's agreement with the fp32 one.
* ``pipeline``: ``pipeline_gpu.py`` for the ``fast`` and ``paper`` presets (mesh previews off,
  progress at its production rate), each preset's figures on disk as soon as it ends, compared
  with the targets (paper <= 10 min and <= 24 GB, fast <= 3 min on one H100).
* ``verdict``: the exit code and why. 0: every installed accelerator passed, every check held,
  every target met. 1: a failure or a missed target. 3: nothing failed, but no accelerator
  was tested (none installed, or no CUDA): never a green run with nothing accelerated.

It refuses a CPU with a clear message; ``--smoke`` runs the same code on tiny models (on the CPU
here; targets are not compared). Figures go into docs/benchmarks.md with the device name.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import RESULTS, machine, parser
from gpu_accelerators import PIPELINE_COMPONENT, build_extensions, check_accelerators
from gpu_report import TARGETS, StepRecord, compare_targets, exit_code
from mpod123.camera import orbit_cameras
from mpod123.config import StableDiffusionConfig, TextualInversionConfig, Zero123Config
from mpod123.guidance import GuidanceInput
from mpod123.runtime.tiny_models import FULL, TINY, save_tiny_stable_diffusion, save_tiny_zero123

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MIN_FP16_COSINE = 0.9
"""The fp16 gradient (loss-scaled for textual inversion) must point where the fp32 one does."""


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


def _nonfinite(x: torch.Tensor) -> int:
    return int((~torch.isfinite(x)).sum())


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = torch.nan_to_num(a.flatten().double()), torch.nan_to_num(b.flatten().double())
    return round(float(torch.nn.functional.cosine_similarity(a, b, dim=0)), 5)


def inversion_gradient(sd_dir: Path, dev: str, resolution: int | None) -> dict:
    """Gradient of `<e>` for one batch in fp32, fp16 unscaled and fp16 with the loss scale."""
    from mpod123.guidance.stable_diffusion import load_stable_diffusion
    from mpod123.guidance.textual_inversion import TextualInversion

    ref = torch.zeros(256, 256, 4)
    ref[64:192, 48:208] = torch.tensor([0.8, 0.3, 0.2, 1.0])
    grads, zeros, bad = {}, {}, {}
    for name, dtype, scale in (("fp32", "float32", None), ("fp16_unscaled", "float16", 1.0), ("fp16_scaled", "float16", None)):
        models = load_stable_diffusion(str(sd_dir), dev, dtype)
        ti = TextualInversion(TextualInversionConfig(batch_size=4, augmentations=4, resolution=resolution, loss_scale=scale), models)
        ti.encode_pool(ref)
        ti.step(ti.draw(torch.Generator().manual_seed(0)), ti.optimizer())
        g = ti.vector.grad.detach().float().cpu() / ti.loss_scale
        grads[name], zeros[name], bad[name] = g, float((g == 0).float().mean()), _nonfinite(g)
        ti.close()
        del ti, models
        _peak_reset(dev)
    return {
        "cosine_fp16_unscaled_vs_fp32": _cosine(grads["fp16_unscaled"], grads["fp32"]),
        "cosine_fp16_scaled_vs_fp32": _cosine(grads["fp16_scaled"], grads["fp32"]),
        "zero_fraction": {k: round(v, 4) for k, v in zeros.items()},
        "nonfinite": bad,
        "grad_norm_fp32": float(grads["fp32"].norm()),
    }


class RawGradients:
    """Counts non-finite entries where they arise, before ``sds_loss`` turns NaN into 0: in the
    UNet's output (a forward hook) and in the SDS gradient (``sds_grad``'s return value, wrapped
    on this one instance), and keeps the last SDS gradient for the fp16/fp32 comparison."""

    def __init__(self, guidance) -> None:
        self.unet_nonfinite = 0
        self.grad_nonfinite = 0
        self.grad: torch.Tensor | None = None
        self._hook = guidance.unet.register_forward_hook(self._on_unet)
        inner = guidance.sds_grad

        def sds_grad(*args, **kwargs):
            grad = inner(*args, **kwargs)
            self.grad_nonfinite += _nonfinite(grad)
            self.grad = grad.detach().float().cpu()
            return grad

        guidance.sds_grad = sds_grad

    def _on_unet(self, module, inputs, output) -> None:
        sample = output.sample if hasattr(output, "sample") else output[0]
        self.unet_nonfinite += _nonfinite(sample)

    def close(self) -> None:
        self._hook.remove()


def timed_sds(guidance, make_input, render: torch.Tensor, key: str, dev: str) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Two steps (warm-up, timed) on the same input and draw: the row, the render's gradient and
    the SDS gradient of the timed step."""
    raw = RawGradients(guidance)
    times = []
    try:
        for _ in range(2):
            render.grad = None
            _sync(dev)
            t0 = time.perf_counter()
            guidance(make_input())[key].backward()
            _sync(dev)
            times.append(time.perf_counter() - t0)
    finally:
        raw.close()
    grad = render.grad.detach().float().cpu()
    row = {"seconds": round(times[-1], 4), "peak_gpu_gb": _peak(dev), "nonfinite_unet_output": raw.unet_nonfinite,
           "nonfinite_sds_grad": raw.grad_nonfinite, "nonfinite_render_grad": _nonfinite(grad),
           "grad_abs_max": float(torch.nan_to_num(grad).abs().max())}
    return row, grad, raw.grad


def sds_steps(root: Path, dev: str, smoke: bool) -> dict:
    """One timed SDS step per prior and dtype, after one warm-up step, on the same render, cameras
    and draw for both dtypes. Renders are 128² for Zero123 and 1024² for Stable Diffusion; in a
    smoke run each model's own size (fp16 resizes need CUDA)."""
    from mpod123.guidance.stable_diffusion import StableDiffusionGuidance, load_stable_diffusion
    from mpod123.guidance.textual_inversion import add_token
    from mpod123.guidance.zero123 import Zero123Guidance

    rows, render_grads, sds_grads = [], {}, {}
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731  the same render for both dtypes
    for dtype in ("float16", "float32"):
        _peak_reset(dev)
        z = Zero123Guidance(Zero123Config(model=str(root / "zero123"), dtype=dtype), torch.rand(256, 256, 3, generator=gen()),
                            orbit_cameras(90.0, 0.0), device=dev)
        r = z.image_size if smoke else 128
        cams = orbit_cameras(70.0, 30.0, 2.5, 40.0, r)
        render = torch.rand(1, r, r, 3, generator=gen()).to(dev).requires_grad_(True)
        row, render_grads["zero123", dtype], sds_grads["zero123", dtype] = timed_sds(
            z, lambda: GuidanceInput(render, torch.ones(1, r, r, 1, device=dev), cams, torch.ones(1, 3, device=dev), 7, 100),
            render, "sds_zero123", dev)
        rows.append({"prior": "zero123", "dtype": dtype, "render": r, **row})
        del z
        _peak_reset(dev)
        models = load_stable_diffusion(str(root / "sd"), dev, dtype)
        add_token(models, "<e>")
        dai = StableDiffusionGuidance(StableDiffusionConfig(model=str(root / "sd"), dtype=dtype), models)
        side = dai.image_size if smoke else 1024
        render2 = torch.rand(1, side, side, 3, generator=gen()).to(dev).requires_grad_(True)
        masks = torch.ones(1, side, side, 1, device=dev)
        masks[:, :, : side // 4] = 0.0
        key = "stable_diffusion_dai"
        row, render_grads[key, dtype], sds_grads[key, dtype] = timed_sds(
            dai, lambda: GuidanceInput(render2, torch.ones_like(masks), cams, torch.ones(1, 3, device=dev), 7, 100, None,
                                       masks), render2, "sds_dai", dev)
        rows.append({"prior": "stable_diffusion_dai", "dtype": dtype, "render": side, **row})
        dai.close()
        del dai, models
    agreement = {}
    for prior in ("zero123", "stable_diffusion_dai"):
        a, b = render_grads[prior, "float16"], render_grads[prior, "float32"]
        agreement[prior] = {
            "cosine_render_grad": _cosine(a, b),
            "cosine_sds_grad": _cosine(sds_grads[prior, "float16"], sds_grads[prior, "float32"]),
            "relative_error_render_grad": round(float(torch.nan_to_num(a - b).norm() / b.norm().clamp_min(1e-30)), 5),
        }
    return {"rows": rows, "fp16_vs_fp32": agreement}


def checks_of(inversion: dict, sds: dict) -> dict[str, dict]:
    """The numeric checks: no non-finite value anywhere, fp16 gradients agreeing with fp32."""
    out = {}
    bad = {k: v for k, v in inversion["nonfinite"].items() if k != "fp16_unscaled" and v}
    cos = inversion["cosine_fp16_scaled_vs_fp32"]
    out["inversion_fp16"] = {"ok": not bad and cos >= MIN_FP16_COSINE,
                             "reason": f"loss-scaled fp16 gradient of <e>: cosine {cos} to fp32 (>= {MIN_FP16_COSINE}), "
                                       f"non-finite entries {bad or 0}"}
    for prior, agree in sds["fp16_vs_fp32"].items():
        rows = [r for r in sds["rows"] if r["prior"] == prior]
        nan = {r["dtype"]: sum(r[k] for k in ("nonfinite_unet_output", "nonfinite_sds_grad", "nonfinite_render_grad"))
               for r in rows}
        cos = agree["cosine_render_grad"]
        out[f"sds_{prior}_fp16"] = {"ok": not any(nan.values()) and cos >= MIN_FP16_COSINE,
                                    "reason": f"render gradient fp16 vs fp32: cosine {cos} (>= {MIN_FP16_COSINE}); "
                                              f"non-finite entries (UNet output, SDS gradient, render gradient) {nan}"}
    return out


def pipeline(args, root: Path, out: Path, timeout: float) -> dict:
    """``pipeline_gpu.py`` in a child process; its JSON (written per preset) is read back even when
    the child was stopped by the budget, so the finished presets' figures survive."""
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(HERE / "pipeline_gpu.py"), "--device", args.device, "--steps", str(args.pipeline_steps),
           "--warmup", str(min(10, args.pipeline_steps // 3)), "--models", str(root), "--out", str(out)]
    cmd += ["--tiny", "--allow-cpu", "--presets", "draft"] if args.smoke else ["--presets", *TARGETS]
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(10.0, timeout))
        rc, tail = done.returncode, (done.stdout + done.stderr)[-3000:]
    except subprocess.TimeoutExpired:
        rc, tail = 124, f"stopped by the check's budget after {timeout:.0f} s"
    record = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    record.update(returncode=rc, file=str(out))
    if rc != 0:
        record["tail"] = tail
    return record


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--smoke", action="store_true", help="tiny models, on the CPU if there is no GPU (a smoke test)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for everything after the extension builds, which have no time cap (default: 600 on "
                        "a GPU; 1800 for --smoke, whose tiny pipeline run takes minutes on a busy CPU)")
    p.add_argument("--models", help="folder to keep the random models in (default: next to the report)")
    p.add_argument("--pipeline-steps", type=int, default=30, help="steps per stage run by the pipeline timing")
    args = p.parse_args()
    if not args.device.startswith("cuda") and not args.smoke:
        sys.exit("gpu_check: no CUDA device here. It measures what only a GPU can tell (fp16 gradients, SDS "
                 "memory, accelerator parity, per-step times at real sizes); run it on the GPU machine, or "
                 "pass --smoke to run it on tiny models here as a smoke test")
    dev = args.device
    args.budget = args.budget if args.budget is not None else 1800.0 if args.smoke else 600.0
    out = Path(args.out) if args.out else RESULTS / ("gpu_check_smoke.json" if args.smoke else "gpu_check.json")
    rec = StepRecord(out, {"benchmark": "gpu_check", "sizes": "tiny" if args.smoke else "real (random weights)",
                           "machine": machine(dev)})
    log = lambda msg: print(msg, flush=True)  # noqa: E731

    rec.step("extensions", build_extensions(dev, log))  # no time cap: a first-use compile takes minutes
    start = time.perf_counter()
    left = lambda: args.budget - (time.perf_counter() - start)  # noqa: E731
    accelerators = check_accelerators(dev, out.parent / f"{out.stem}_parity", timeout_s=max(60.0, left() * 0.4), log=log)
    rec.step("accelerators", accelerators)

    size, dtype = (TINY, None) if args.smoke else (FULL, torch.float16)  # stored in fp16, loaded in either
    root = Path(args.models) if args.models else out.parent / f"{out.stem}_models"
    if not (root / "zero123" / "model_index.json").is_file():
        save_tiny_zero123(root / "zero123", size=size, dtype=dtype)
    if not (root / "sd" / "model_index.json").is_file():
        save_tiny_stable_diffusion(root / "sd", size=size, dtype=dtype)
    t0 = time.perf_counter()
    inversion = inversion_gradient(root / "sd", dev, 32 if args.smoke else None)
    inversion["seconds"] = round(time.perf_counter() - t0, 1)
    rec.step("inversion_gradient", inversion)
    log(f"gpu_check: inversion gradient, fp16 (scaled) vs fp32 cosine {inversion['cosine_fp16_scaled_vs_fp32']}")
    t0 = time.perf_counter()
    sds = sds_steps(root, dev, args.smoke)
    sds["seconds"] = round(time.perf_counter() - t0, 1)
    rec.step("sds", sds)
    log(f"gpu_check: SDS fp16 vs fp32 {sds['fp16_vs_fp32']}")

    pipe = pipeline(args, root, out.with_name(f"{out.stem}_pipeline.json"), left() - 5)
    rec.step("pipeline", pipe)
    checks = checks_of(inversion, sds)
    done_presets = {r["preset"] for r in pipe["rows"]}
    wanted = ["draft"] if args.smoke else list(TARGETS)
    checks["pipeline"] = {"ok": set(wanted) <= done_presets,  # exit 1 with every row: a missed target (below)
                          "reason": f"pipeline_gpu.py exited {pipe['returncode']}; presets finished: {sorted(done_presets)}"}
    targets: dict[str, dict | None] = {}
    if args.smoke:
        targets = {p: None for p in TARGETS}  # tiny models on the CPU: nothing to compare
    else:
        for preset in TARGETS:
            row = next((r for r in pipe["rows"] if r["preset"] == preset), None)
            targets[preset] = compare_targets(row) if row else {"met": False, "missed": ["did not finish"]}
        used = {n: c for n, c in PIPELINE_COMPONENT.items() if accelerators[n]["verdict"] == "pass"}
        for row in pipe["rows"]:
            took_torch = [n for n, c in used.items() if row["backends"].get(c) != n]
            checks[f"backends_{row['preset']}"] = {
                "ok": not took_torch,
                "reason": f"the pipeline took the torch path for {took_torch} although they passed "
                          f"(fallbacks: {row.get('backend_fallbacks')})" if took_torch else "every passing accelerator used"}
    rec.step("targets", {p: t if t is not None else {"not compared": "smoke run (tiny models)"} for p, t in targets.items()})
    rec.step("checks", checks)
    code, problems = exit_code(accelerators, checks, targets)
    rec.set("seconds", round(time.perf_counter() - start, 1))
    rec.step("verdict", {"exit_code": code, "problems": problems})
    for name, c in checks.items():
        log(f"gpu_check: check {name:<18} {'ok' if c['ok'] else 'FAILED':<7} {c['reason']}")
    for preset, t in targets.items():
        log(f"gpu_check: target {preset:<6} " + ("not compared (smoke run)" if t is None else
                                               "met" if t["met"] else f"MISSED: {', '.join(t['missed'])}"))
    log(f"gpu_check: exit {code}: " + ("; ".join(problems) or "every installed accelerator passed, every check "
                                       "held and every target was met") + f" (report: {out})")
    sys.exit(code)


if __name__ == "__main__":
    main()
