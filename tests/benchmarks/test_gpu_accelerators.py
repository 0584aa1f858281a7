"""gpu_accelerators: stale extension locks, per-accelerator verdicts and parity counts, on the CPU."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from torch.utils.file_baton import FileBaton

import gpu_accelerators as ga
from mpod123.runtime.accelerators import ACCELERATORS, probe

ROOT = Path(__file__).resolve().parents[2]


def _lock(root: Path, *parts: str, age_s: float = 120.0) -> Path:
    lock = root.joinpath(*parts, "lock")
    lock.parent.mkdir(parents=True)
    lock.touch()
    then = time.time() - age_s
    os.utime(lock, (then, then))
    return lock


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="tells a held lock by /proc (Linux)")
def test_a_stale_lock_is_removed_and_a_held_one_is_left(tmp_path, monkeypatch):
    """torch's FileBaton keeps its lock open while it builds; a killed build leaves the file and
    nobody holding it, and every later load of the extension waits on it forever."""
    stale = _lock(tmp_path, "py311_cu128", "nerfacc_cuda")  # the default layout: <root>/<pyXY_cuZZ>/<name>
    flat = _lock(tmp_path, "nvdiffrast_plugin")  # $TORCH_EXTENSIONS_DIR/<name>
    young = _lock(tmp_path, "py311_cu128", "starting", age_s=0.0)  # just created: maybe a build about to open it
    held = tmp_path / "py311_cu128" / "other" / "lock"
    held.parent.mkdir(parents=True)
    building = FileBaton(str(held))  # what torch's JIT build takes (and keeps open) while it compiles
    assert building.try_acquire()
    os.utime(held, (time.time() - 120, time.time() - 120))
    assert not FileBaton(str(stale)).try_acquire(), "a stale lock blocks the next build"
    try:
        monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
        messages = ga.clear_stale_locks(min_age_s=30.0)
        assert held.exists(), "the lock of a build in progress is left alone"
    finally:
        building.release()
    assert not stale.exists() and not flat.exists() and young.exists()
    after = FileBaton(str(stale))
    assert after.try_acquire(), "the next build can take the lock"
    after.release()
    text = "\n".join(messages)
    assert f"{stale}: removed a stale lock left by a killed extension build" in text
    assert f"{held}: held by pid {os.getpid()}" in text
    assert f"{young}:" in text and "left alone" in text.split(f"{young}:")[1].splitlines()[0]
    assert len(messages) == 4


def test_build_extensions_on_the_cpu_compiles_nothing_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = _lock(tmp_path, "nerfacc_cuda")
    logged = []
    out = ga.build_extensions("cpu", logged.append)
    assert not lock.exists() and any("removed a stale lock" in m for m in logged)
    assert set(out) == {"locks", *ACCELERATORS}
    for name in ACCELERATORS:
        row = out[name]
        assert row["installed"] is (probe(name) is not None)
        if not row["installed"]:
            assert row["extension"] == "not installed"
        elif ACCELERATORS[name].extension is not None:
            assert row["extension"].startswith("not loaded: needs a CUDA device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without CUDA reports")
def test_on_the_cpu_no_accelerator_passes_and_each_says_why():
    rows = ga.verdicts("cpu")
    assert set(rows) == set(ACCELERATORS)
    for name, row in rows.items():
        if probe(name) is None:
            assert row["verdict"] == "not installed"
            assert "not importable" in row["reason"] and ACCELERATORS[name].install_hint in row["reason"]
        else:  # nerfacc installs here (the test extras), without CUDA
            assert row["verdict"] == "unusable" and "needs a CUDA device" in row["reason"]


def test_parity_counts_come_from_the_test_report(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "def test_ok():\n    assert 1 + 1 == 2\n"
        "def test_bad():\n    assert 1 + 1 == 3, 'one and one'\n"
        "@pytest.mark.skip(reason='needs a CUDA device')\ndef test_skipped():\n    pass\n")
    row = ga.run_parity(["test_x.py"], tmp_path / "out" / "r.xml", 120, cwd=tmp_path)
    assert (row["passed"], row["failed"], row["skipped"]) == (1, 1, 1)
    assert any("test_bad failed" in m and "one and one" in m for m in row["messages"])
    assert any("test_skipped skipped" in m and "needs a CUDA device" in m for m in row["messages"])
    gone = ga.run_parity(["test_x.py::test_renamed"], tmp_path / "r2.xml", 120, cwd=tmp_path)
    assert gone["passed"] == 0 and gone["failed"] >= 1, "a parity test that no longer exists is a failure"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what the parity tests do without CUDA")
def test_each_accelerators_parity_tests_exist_and_none_passes_without_cuda(tmp_path):
    """The old keyword filter picked CPU tests that always pass. Each accelerator's parity ids
    name exactly its CUDA tests: every one is found, and on the CPU every one skips."""
    ids = [t for tests in ga.PARITY.values() for t in tests]
    assert set(ga.PARITY) == set(ACCELERATORS)
    row = ga.run_parity(ids, tmp_path / "r.xml", 300, cwd=ROOT)
    assert (row["passed"], row["failed"], row["skipped"]) == (0, 0, len(ids)), row


def _provisional():
    return {"verdict": "pass", "reason": "extension loads and the parity self-test passed"}


def test_an_accelerator_passes_only_when_its_parity_tests_ran_and_passed():
    passed = ga.final_verdict(_provisional(), {"passed": 1, "failed": 0, "skipped": 0, "messages": []})
    assert passed["verdict"] == "pass" and passed["parity"] == {"passed": 1, "failed": 0, "skipped": 0}
    skipped = ga.final_verdict(_provisional(), {"passed": 0, "failed": 0, "skipped": 1,
                                                "messages": ["t::x skipped: kaolin is not installed"]})
    assert skipped["verdict"] == "fail" and "kaolin is not installed" in skipped["reason"]
    failed = ga.final_verdict(_provisional(), {"passed": 1, "failed": 1, "skipped": 0,
                                               "messages": ["t::y failed: cos 0.2 < 0.95"]})
    assert failed["verdict"] == "fail" and "cos 0.2" in failed["reason"]
    none_ran = ga.final_verdict(_provisional(), {"passed": 0, "failed": 0, "skipped": 0, "messages": []})
    assert none_ran["verdict"] == "fail"
    absent = {"verdict": "not installed", "reason": "no module"}
    assert ga.final_verdict(absent, None) == absent
