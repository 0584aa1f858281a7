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
                         capture_output=True, text=True, env=ENV, timeout=1500)
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
