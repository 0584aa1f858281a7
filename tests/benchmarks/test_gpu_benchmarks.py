"""The GPU benchmark scripts: they refuse the CPU with a clear message, and their code runs (tiny models)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(script: str, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", **(env_extra or {}))
    return subprocess.run([sys.executable, str(BENCH / script), "--device", "cpu", *args], capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.mark.parametrize("script", ["bench_guidance_gpu.py", "pipeline_gpu.py"])
def test_gpu_benchmarks_refuse_the_cpu(script):
    out = _run(script)
    assert out.returncode != 0 and "needs a CUDA device" in out.stderr


def test_guidance_benchmark_measures_every_prior(tmp_path):
    out = _run("bench_guidance_gpu.py", "--tiny", "--allow-cpu", "--steps", "2", "--out", str(tmp_path / "g.json"),
               "--models", str(tmp_path / "models"))
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {r["prior"]: r for r in json.loads((tmp_path / "g.json").read_text())["rows"]}
    assert set(rows) == {"zero123", "inversion", "dai"}
    assert all(r["ms_per_step_median"] > 0 for r in rows.values())
    assert rows["dai"]["mrca_layers"] > 0


def test_pipeline_benchmark_extrapolates_each_stage(tmp_path):
    out = _run("pipeline_gpu.py", "--tiny", "--allow-cpu", "--steps", "6", "--warmup", "1", "--presets", "draft",
               "--out", str(tmp_path / "p.json"), "--models", str(tmp_path / "models"))
    assert out.returncode == 0, out.stderr[-2000:]
    (row,) = json.loads((tmp_path / "p.json").read_text())["rows"]
    # stage 1 first runs through its occupancy grid's warm-up (32 steps in draft), timed apart
    for stage, budget, first in (("outline", 200, 32), ("detail", 200, 0), ("inversion", 20, 0)):
        s = row["stages"][stage]
        assert s["steps_run"] == first + 6 and s["budget_steps"] == budget and s["steps_per_s"] > 0
        assert s["extrapolated_s"] >= 0.99 * (s["setup_s"] + (budget - first) / s["steps_per_s"]) - 0.2
    assert row["extrapolated_total_s"] >= sum(s["extrapolated_s"] for s in row["stages"].values())
