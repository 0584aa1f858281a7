"""The GPU benchmark scripts: they refuse the CPU with a clear message, and their code runs (tiny models)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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


def test_pipeline_benchmark_writes_each_preset_as_it_ends_and_extrapolates_each_stage(tmp_path):
    """Two presets; the run is killed as soon as the first one's row is on disk (in the middle
    of the second): that row survives whole. Every step is reported here (``--progress-hz 0``)
    so that 6 tiny steps give a rate; a real run keeps the production rate."""
    out = tmp_path / "p.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.Popen([sys.executable, str(BENCH / "pipeline_gpu.py"), "--device", "cpu", "--tiny", "--allow-cpu",
                             "--steps", "6", "--warmup", "1", "--progress-hz", "0", "--presets", "draft", "fast",
                             "--out", str(out), "--models", str(tmp_path / "models")],
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "err.txt").open("w"), env=env)
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if json.loads(out.read_text())["steps_done"]:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        assert proc.poll() is None, (tmp_path / "err.txt").read_text()[-2000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    record = json.loads(out.read_text())
    assert record["steps_done"] == ["draft"] and record["mesh_previews"] == "off" and record["progress_hz"] == 0.0
    (row,) = record["rows"]
    assert row["preset"] == "draft" and row["mesh_previews_emitted"] == 0 and "target" not in row
    # stage 1 first runs through its occupancy grid's warm-up (32 steps in draft), timed apart
    for stage, budget, first in (("outline", 200, 32), ("detail", 200, 0), ("inversion", 20, 0)):
        s = row["stages"][stage]
        assert s["steps_run"] == first + 6 and s["budget_steps"] == budget and s["steps_per_s"] > 0
        assert s["extrapolated_s"] >= 0.99 * (s["setup_s"] + (budget - first) / s["steps_per_s"]) - 0.2
    assert row["extrapolated_total_s"] >= sum(s["extrapolated_s"] for s in row["stages"].values())
