"""The add-on's bpy-free parts that keep jobs: the job file, the owner identity, the cache limits, the network
thread (against real ZeroMQ sockets) and the backend's face-budget option."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("zmq")

from blender_addon.core.network import NetworkThread, upload_timeout
from blender_addon.core.jobfile import CacheLimits, JobFile, owner_id, prune_cache
from tests.addon_backend import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_the_job_file_round_trips_and_survives_a_corrupt_file(tmp_path):
    jf = JobFile(tmp_path / "jobs.json")
    assert jf.load() == {}
    jf.update("a" * 32, name="teapot", state="running", location=[1.0, 2.0, 3.0], seed=7)
    jf.update("b" * 32, name="vase", state="imported")
    jf.update("a" * 32, last_seq=12)
    jf.flush()
    again = JobFile(tmp_path / "jobs.json").load()  # another instance reads what is on disk
    assert again["a" * 32]["name"] == "teapot" and again["a" * 32]["last_seq"] == 12 and again["a" * 32]["seed"] == 7
    assert again["b" * 32]["state"] == "imported" and "created" in again["b" * 32]
    assert not list(tmp_path.glob("*.tmp")), "written through a temporary file and a rename"

    (tmp_path / "jobs.json").write_text('{"half a file": ')
    assert JobFile(tmp_path / "jobs.json").load() == {}
    assert (tmp_path / "jobs.json.bad").read_text() == '{"half a file": ', "the unreadable file is kept aside"
    (tmp_path / "jobs.json").write_text('["not", "a", "dict"]')
    assert JobFile(tmp_path / "jobs.json").load() == {}


def test_save_soon_returns_before_the_write_and_the_latest_version_wins(tmp_path):
    jf = JobFile(tmp_path / "jobs.json")
    for i in range(50):
        jf.save_soon({"j": {"state": "running", "last_seq": i}})
    assert jf.load_cached()["j"]["last_seq"] == 49, "the memory copy is current at once"
    jf.flush()
    assert json.loads((tmp_path / "jobs.json").read_text())["j"]["last_seq"] == 49
    assert JobFile.at(tmp_path / "jobs.json") is JobFile.at(tmp_path / "." / "jobs.json"), "one per path"


def test_the_owner_identity_is_created_once_and_kept(tmp_path):
    first = owner_id(tmp_path)
    assert len(first) == 32 and first.isalnum()
    assert owner_id(tmp_path) == first
    # a second process (another Blender launch) reads the same identity
    code = "import sys; sys.path.insert(0, sys.argv[1]); from blender_addon.core.jobfile import owner_id; print(owner_id(sys.argv[2]))"
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == first
    (tmp_path / "owner").write_text("../../etc")  # damaged: replaced by a fresh identity, not used
    fresh = owner_id(tmp_path)
    assert fresh != first and fresh.isalnum() and owner_id(tmp_path) == fresh


def _file(folder: Path, name: str, size: int, age_s: float, now: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"x" * size)
    os.utime(path, (now - age_s, now - age_s))
    return path


def test_the_cache_is_pruned_by_age_then_size_never_for_an_unfinished_job(tmp_path):
    now = time.time()
    results, previews = tmp_path / "results", tmp_path / "previews"
    old_done = _file(results, "a" * 32 + ".glb", 1000, 40 * 86400, now)
    old_running = _file(previews, "r" * 32 + "-outline.png", 1000, 40 * 86400, now)
    mid = _file(results, "b" * 32 + ".glb", 3000, 5 * 86400, now)
    new = _file(results, "c" * 32 + ".glb", 3000, 60, now)
    partial = _file(results, "d" * 32 + ".glb.part", 9000, 50 * 86400, now)
    records = {"r" * 32: {"state": "running"}, "a" * 32: {"state": "imported"}, "b" * 32: {"state": "done"}}

    gone = prune_cache([results, previews], records, CacheLimits(max_age_s=30 * 86400), now)
    assert gone == [old_done], "only the old file of a finished job"
    assert old_running.exists() and partial.exists(), "an unfinished job's files and downloads in progress stay"

    gone = prune_cache([results, previews], records, CacheLimits(max_bytes=4500), now)
    assert gone == [mid], "the oldest first, until under the limit (unfinished jobs' files do not count as prunable)"
    assert new.exists() and old_running.exists()
    assert prune_cache([results, previews], records, CacheLimits(), now) == [], "no limits, nothing deleted"


def test_the_network_thread_never_makes_the_caller_wait(tmp_path):
    """Against a dead address: every call returns at once; the timeout comes back as an outcome."""
    net = NetworkThread(f"tcp://127.0.0.1:{free_port()}", "owner-test", timeout_s=0.5)
    try:
        t0 = time.perf_counter()
        net.call("hello", tag="h")
        net.call("submit", b"\x89PNG" + b"\0" * 1000, {"preset": "draft"}, "j" * 32, tag="s")
        net.call("fetch", "j" * 32, str(tmp_path / "r.glb"), tag="f")
        queued_s = time.perf_counter() - t0
        assert queued_s < 0.05, queued_s
        outcomes, deadline = [], time.monotonic() + 15
        while len([o for o in outcomes if o.kind != "notice"]) < 3 and time.monotonic() < deadline:
            t0 = time.perf_counter()
            outcomes += net.take()
            assert time.perf_counter() - t0 < 0.01, "take() never waits"
            time.sleep(0.02)
        calls = [o for o in outcomes if o.kind != "notice"]
        assert [(o.op, o.tag, o.kind, o.timeout) for o in calls] == [
            ("hello", "h", "error", True), ("submit", "s", "error", True), ("fetch", "f", "error", True)]
        assert "not running or not reachable" in calls[0].error
        assert not (tmp_path / "r.glb").exists()
    finally:
        net.stop()
    assert not net.alive


def test_a_large_upload_gets_time_in_proportion_to_its_size():
    assert upload_timeout(10.0, 0) == 10.0
    assert upload_timeout(10.0, 20 * 128 * 1024) == pytest.approx(30.0), "20 s more for 2.5 MiB at the slowest rate"


def test_the_face_budget_option_is_checked():
    pytest.importorskip("torch")
    from backend.kinds.image import JobOptionsError, parse_target_faces

    assert parse_target_faces({}) is None
    assert parse_target_faces({"target_faces": 5000}) == 5000
    assert parse_target_faces({"target_faces": "40"}) == 40
    for bad in (3, 10**9, "many", True, [5], 4.5e12):
        with pytest.raises(JobOptionsError, match="target_faces"):
            parse_target_faces({"target_faces": bad})
