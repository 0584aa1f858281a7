"""benchmarks/gpu_check.py: refuses the CPU with a clear message; its code runs on tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--device", "cpu", *args], capture_output=True,
                          text=True, env=env, timeout=900)


def test_gpu_check_refuses_the_cpu_and_says_what_to_do():
    out = _run()
    assert out.returncode != 0
    assert "no CUDA device" in out.stderr and "--smoke" in out.stderr


@pytest.mark.slow
def test_gpu_check_smoke_reports_every_section(tmp_path):
    out = _run("--smoke", "--pipeline-steps", "3", "--out", str(tmp_path / "r.json"), "--models", str(tmp_path / "m"))
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((tmp_path / "r.json").read_text())
    grad = record["inversion_gradient"]
    assert grad["cosine_fp16_scaled_vs_fp32"] > 0.9 and grad["zero_fraction"]["fp32"] == 0.0
    sds = {(r["prior"], r["dtype"]) for r in record["sds"]}
    assert sds == {(p, d) for p in ("zero123", "stable_diffusion_dai") for d in ("float16", "float32")}
    assert all(r["finite_grad"] and r["seconds"] > 0 for r in record["sds"])
    assert "skipped" in record["parity"]
    rows = record["pipeline"]["rows"]
    assert rows and rows[0]["preset"] == "draft" and rows[0]["extrapolated_total_s"] > 0
