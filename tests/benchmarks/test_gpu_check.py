"""benchmarks/gpu_check.py: refuses the CPU with a clear message; on tiny models it reports every
accelerator with a verdict and a reason, exits 3 ("nothing accelerated was tested") on a machine
without CUDA, and writes its JSON step by step, so a kill leaves the finished steps on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mpod123.runtime.accelerators import ACCELERATORS

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
STEPS = ["extensions", "accelerators", "inversion_gradient", "sds", "pipeline", "targets", "checks", "verdict"]
no_cuda_here = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a machine without CUDA")


def _cmd(*args: str) -> list[str]:
    return [sys.executable, str(BENCH / "gpu_check.py"), "--device", "cpu", *args]


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def test_gpu_check_refuses_the_cpu_and_says_what_to_do():
    out = subprocess.run(_cmd(), capture_output=True, text=True, env=ENV, timeout=600)
    assert out.returncode != 0
    assert "no CUDA device" in out.stderr and "--smoke" in out.stderr


@no_cuda_here
def test_a_kill_in_the_middle_leaves_the_finished_steps_on_disk(tmp_path):
    report = tmp_path / "r.json"
    proc = subprocess.Popen(_cmd("--smoke", "--out", str(report), "--models", str(tmp_path / "m")),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            seen = _read(report)
            if seen and "accelerators" in seen["steps_done"]:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "still running when the second step landed"
        proc.send_signal(signal.SIGKILL)  # in the middle of making the models or the inversion step
    finally:
        proc.kill()
        proc.wait(30)
    record = json.loads(report.read_text())  # whole: written atomically
    done = record["steps_done"]
    assert done == STEPS[: len(done)] and len(done) >= 2 and "verdict" not in record
    assert set(record["accelerators"]) == set(ACCELERATORS)
    assert all(record["accelerators"][n]["verdict"] in ("not installed", "unusable") for n in ACCELERATORS)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".r.json")], "no temporary file is left"


@pytest.mark.slow
@no_cuda_here
def test_gpu_check_smoke_says_nothing_accelerated_and_reports_every_section(tmp_path):
    report = tmp_path / "r.json"
    out = subprocess.run(_cmd("--smoke", "--pipeline-steps", "3", "--out", str(report), "--models", str(tmp_path / "m")),
                         capture_output=True, text=True, env=ENV, timeout=2400)
    assert out.returncode == 3, out.stdout[-3000:] + out.stderr[-3000:]
    for name in ACCELERATORS:  # one line each, with the verdict and the reason
        line = next(ln for ln in out.stdout.splitlines() if ln.startswith(f"gpu_check: {name} "))
        assert ("not installed" in line and "install it with" in line) or ("unusable" in line and "CUDA" in line), line
    assert "gpu_check: exit 3: nothing accelerated was tested" in out.stdout
    record = json.loads(report.read_text())
    assert record["steps_done"] == STEPS
    assert record["verdict"]["exit_code"] == 3
    grad = record["inversion_gradient"]
    assert grad["cosine_fp16_scaled_vs_fp32"] > 0.9 and grad["zero_fraction"]["fp32"] == 0.0
    assert grad["nonfinite"] == {"fp32": 0, "fp16_unscaled": 0, "fp16_scaled": 0}
    rows = {(r["prior"], r["dtype"]): r for r in record["sds"]["rows"]}
    assert set(rows) == {(p, d) for p in ("zero123", "stable_diffusion_dai") for d in ("float16", "float32")}
    for r in rows.values():
        assert r["seconds"] > 0 and r["grad_abs_max"] > 0
        assert r["nonfinite_unet_output"] == r["nonfinite_sds_grad"] == r["nonfinite_render_grad"] == 0
    for prior, agree in record["sds"]["fp16_vs_fp32"].items():
        assert agree["cosine_render_grad"] > 0.9 and agree["cosine_sds_grad"] > 0.9, (prior, agree)
    assert all(c["ok"] for c in record["checks"].values()), record["checks"]
    assert all("not compared" in t for t in record["targets"].values())
    (row,) = record["pipeline"]["rows"]
    assert row["preset"] == "draft" and row["extrapolated_total_s"] > 0 and row["mesh_previews_emitted"] == 0


def test_a_nan_is_counted_where_it_arises_although_the_sds_loss_hides_it(tmp_path):
    """``sds_loss`` turns NaN into 0, so the render's gradient stays finite whatever the UNet
    did (the old check looked only there). gpu_check counts the UNet's output and the SDS
    gradient before that, and its fp16 check fails on them."""
    import gpu_check
    from mpod123.camera import orbit_cameras
    from mpod123.config import Zero123Config
    from mpod123.guidance import GuidanceInput
    from mpod123.guidance.zero123 import Zero123Guidance
    from mpod123.runtime.tiny_models import TINY, save_tiny_zero123

    save_tiny_zero123(tmp_path / "z", size=TINY)
    z = Zero123Guidance(Zero123Config(model=str(tmp_path / "z"), dtype="float32"),
                        torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(0)), orbit_cameras(90.0, 0.0))
    r = z.image_size

    def poison(module, inputs, output):  # three NaN in the conditional half of the CFG batch
        output.sample[0, 0, 0, :3] = float("nan")

    z.unet.register_forward_hook(poison)  # before gpu_check's own hook, so it sees the NaN
    render = torch.rand(1, r, r, 3).requires_grad_(True)
    cams = orbit_cameras(70.0, 30.0, 2.5, 40.0, r)
    row, render_grad, sds_grad = gpu_check.timed_sds(
        z, lambda: GuidanceInput(render, torch.ones(1, r, r, 1), cams, torch.ones(1, 3), 7, 100), render, "sds_zero123", "cpu")
    assert bool(torch.isfinite(render_grad).all()), "the loss hid the NaN from the render's gradient"
    assert row["nonfinite_render_grad"] == 0
    assert row["nonfinite_unet_output"] == 2 * 3, "both timed calls (warm-up and timed) counted"
    assert row["nonfinite_sds_grad"] == 2 * 3 and _nonfinite(sds_grad) == 3
    sds = {"rows": [{**row, "prior": "zero123", "dtype": "float16"}, {**row, "prior": "zero123", "dtype": "float32"}],
           "fp16_vs_fp32": {"zero123": {"cosine_render_grad": 1.0}}}
    inversion = {"nonfinite": {"fp32": 0, "fp16_unscaled": 0, "fp16_scaled": 0}, "cosine_fp16_scaled_vs_fp32": 0.99}
    checks = gpu_check.checks_of(inversion, sds)
    assert checks["inversion_fp16"]["ok"] and not checks["sds_zero123_fp16"]["ok"]
    assert "non-finite" in checks["sds_zero123_fp16"]["reason"]


def _nonfinite(x: torch.Tensor) -> int:
    return int((~torch.isfinite(x)).sum())
