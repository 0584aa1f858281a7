"""What only the Ray executor does: concurrent actors, reattaching after a front-door restart,
checkpoints that travel back to the front door, and a real cluster behind a real ``mpod123 serve``.

The client-level behaviour shared with the local executor (a job's life, resume, cancel, a
killed worker, a restarted backend, the watchdog) is tested once for both, in test_server.py.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

pytest.importorskip("zmq")
pytest.importorskip("ray", reason="the Ray executor's tests need ray: pip install 'mpod123[ray]'")

from backend.demo import pattern_block  # noqa: E402
from backend.ray_actor import pack_folder, unpack_folder  # noqa: E402
from tests.backend_harness import Backend, Client, submit_job  # noqa: E402


def _events(client: Client, job_id: str) -> list:
    return [m for m in client.events if m.job_id == job_id]


def _assert_gap_free(events: list) -> None:
    seqs = [m.seq for m in events]
    assert seqs == list(range(1, len(seqs) + 1)), seqs


def _progress_steps(events: list, stage: str) -> list[int]:
    return [m.content["step"] for m in events if m.content["kind"] == "progress" and m.content["stage"] == stage]


def test_a_work_folder_travels_as_a_tar_and_nothing_lands_outside(tmp_path):
    src = tmp_path / "src"
    (src / "run" / "outline").mkdir(parents=True)
    (src / "run" / "outline" / "state.pt").write_bytes(os.urandom(5000))
    (src / "run.json").write_text('{"stage": "outline"}')
    dst = tmp_path / "dst"
    dst.mkdir()
    unpack_folder(pack_folder(src), dst)
    assert (dst / "run" / "outline" / "state.pt").read_bytes() == (src / "run" / "outline" / "state.pt").read_bytes()
    assert (dst / "run.json").read_text() == '{"stage": "outline"}'

    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(tarfile.TarError):
        unpack_folder(evil.getvalue(), dst)
    assert not (tmp_path / "escaped.txt").exists()


def test_two_jobs_run_at_once_each_with_ordered_events_and_its_own_result(tmp_path, ray_runtime):
    b = Backend(tmp_path, "ray")
    try:
        c = Client(b.endpoint)
        size = 300_000
        jobs = [submit_job(c, {"steps": 15, "step_s": 0.1, "result_bytes": size})[0] for _ in range(2)]
        pids = {}
        deadline = time.time() + 30
        while len(pids) < 2 and time.time() < deadline:
            pids.update(b.executor.worker_pids())
            time.sleep(0.05)
        for job_id in jobs:
            c.wait_for("done", job_id, timeout=60)
        assert len(set(pids.values())) == 2, "each job in its own Ray worker"
        order = [(m.job_id, m.content["kind"]) for m in c.events]
        for mine, other in (jobs, jobs[::-1]):
            assert order.index((mine, "progress")) < order.index((other, "done")), "the two jobs overlapped in time"
        for job_id in jobs:
            events = _events(c, job_id)
            _assert_gap_free(events)
            assert _progress_steps(events, "outline") == list(range(1, 16))
            assert _progress_steps(events, "detail") == list(range(1, 16))
            block = pattern_block(job_id)
            assert c.download(job_id) == (block * (size // len(block) + 1))[:size], "each job got its own result"
        c.close()
    finally:
        b.stop()


def test_a_long_database_lock_neither_fails_nor_charges_a_ray_job_and_loses_no_event(tmp_path, ray_runtime):
    """The front door writes a Ray job's events; a lock past its busy timeout made a write raise, and the
    job was failed over (attempt 1 of 2, its actor killed). The actor keeps its events, so the front door
    waits the lock out and stores the same item again: the job goes on, gap-free, on its first attempt."""
    import sqlite3

    b = Backend(tmp_path, "ray", busy_timeout_s=0.2, poll_s=0.02)  # the store gives up on a lock after 0.2 s
    try:
        c = Client(b.endpoint)
        job_id, _ = submit_job(c, {"steps": 30, "step_s": 0.05, "result_bytes": 1000})
        c.wait_for("progress", job_id, timeout=60)
        other = sqlite3.connect(b.store.path, isolation_level=None, timeout=5)
        other.execute("BEGIN EXCLUSIVE")
        time.sleep(1.5)  # more than seven busy timeouts, while the job makes events
        other.execute("ROLLBACK")
        other.close()
        c.wait_for("done", job_id, timeout=90)
        events = _events(c, job_id)
        _assert_gap_free(events)
        assert _progress_steps(events, "outline") == list(range(1, 31))
        assert c.request("status", job_id=job_id).content["attempts"] == 1, "the lock was charged as the job's failure"
        c.close()
    finally:
        b.stop()


def test_a_restarted_front_door_reattaches_to_the_running_job(tmp_path, ray_runtime):
    b = Backend(tmp_path, "ray")
    c = Client(b.endpoint)
    job_id, _ = submit_job(c, {"steps": 20, "step_s": 0.1})
    c.wait_for("progress", job_id)
    pid = b.executor.worker_pids()[b.sid(job_id)]
    b.stop(kill=False)  # the front door goes away; the job's actor runs on
    c.close()
    time.sleep(0.5)
    b2 = Backend(tmp_path, "ray")
    try:
        assert job_id not in [j.job_id for j in b2.recovered], "reattached, not re-queued"
        c2 = Client(b2.endpoint)
        c2.request("resume", {"last_seq": 0}, job_id=job_id)
        c2.wait_for("done", job_id, timeout=60)
        events = _events(c2, job_id)
        _assert_gap_free(events)
        assert _progress_steps(events, "outline") == list(range(1, 21)), "every step exactly once: nothing re-ran"
        assert any("reattached" in m.content.get("text", "") for m in events if m.content["kind"] == "log")
        assert b2.executor.worker_pids().get(b2.sid(job_id), pid) == pid
        assert b2.store.get(b2.sid(job_id)).attempts == 1
        assert len(c2.download(job_id)) > 0
        c2.close()
    finally:
        b2.stop()


def test_a_job_whose_worker_dies_after_a_stage_resumes_from_the_checkpoint_it_sent_back(tmp_path, ray_runtime):
    b = Backend(tmp_path, "ray")
    try:
        c = Client(b.endpoint)
        job_id, _ = submit_job(c, {"steps": 10, "step_s": 0.1, "result_bytes": 1000})
        c.wait_for("stage_done", job_id, timeout=60)
        checkpoint = tmp_path / "data" / "jobs" / b.sid(job_id) / "checkpoint.tar"
        deadline = time.time() + 10
        while not checkpoint.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert checkpoint.exists(), "the outline checkpoint came back to the front door"
        os.kill(b.executor.worker_pids()[b.sid(job_id)], signal.SIGKILL)
        c.wait_for("done", job_id, timeout=60)
        events = _events(c, job_id)
        _assert_gap_free(events)
        logs = " | ".join(m.content["text"] for m in events if m.content["kind"] == "log")
        assert "re-queued, it resumes from its last stage checkpoint" in logs
        assert "resumed: stage outline was already done" in logs
        assert _progress_steps(events, "outline") == list(range(1, 11)), "stage 1 did not run again"
        assert b.store.get(b.sid(job_id)).attempts == 2
        assert not checkpoint.exists(), "a finished job's checkpoint is removed"
        c.close()
    finally:
        b.stop()


# ------------------------------------------------- a real cluster, a real serve
@pytest.fixture
def ray_head(tmp_path):
    """``ray start --head`` as its own process group (stopped by killing that group): a cluster
    that outlives the front door, as on a studio's GPU hosts."""
    log = open(tmp_path / "ray-head.log", "w+")
    ray_cli = Path(sys.executable).with_name("ray")
    proc = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--block", "--port", "0", "--num-cpus", "2", "--include-dashboard", "false",
         "--object-store-memory", str(100 * 2**20), "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        address = None
        while address is None and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            match = re.search(r"ray start --address='([^']+)'", (tmp_path / "ray-head.log").read_text())
            address = match.group(1) if match else None
        assert address, (tmp_path / "ray-head.log").read_text()[-3000:]
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        log.close()


def _serve(data: Path, address: str, bind: str = "tcp://127.0.0.1:0"):
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpod123", "serve", "--bind", bind, "--data", str(data), "--job", "backend.demo:demo_job",
         "--executor", "ray", "--ray-address", address, "--ray-gpus", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    while True:  # Ray's own start-up lines come first
        line = proc.stdout.readline()
        lines.append(line)
        match = re.search(r"mpod123 backend on (tcp://\S+) ", line)
        if match:
            return proc, match.group(1)
        assert line, "".join(lines)


def test_serve_killed_mid_job_and_restarted_reattaches_and_the_client_sees_no_gap(tmp_path, ray_head):
    from backend.client import Client as RealClient

    proc, endpoint = _serve(tmp_path / "data", ray_head)
    try:
        client = RealClient(endpoint, session="alice", timeout_s=20)
        job_id = client.submit(b"\x89PNG img", {"steps": 40, "step_s": 0.1, "result_bytes": 5000})
        seen: list = []
        deadline = time.time() + 60
        while not any(m.content["kind"] == "progress" for m in seen) and time.time() < deadline:
            seen += client.drain()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # the front door dies; the cluster and the job's actor live on
        proc.wait(timeout=10)
        proc, endpoint2 = _serve(tmp_path / "data", ray_head, bind=endpoint)
        client.resume(job_id)
        final = client.wait(job_id, timeout_s=90, on_event=seen.append)
        assert final.content["kind"] == "done"
        mine = [m for m in seen if m.job_id == job_id]
        _assert_gap_free(mine)
        assert _progress_steps(mine, "outline") == list(range(1, 41)), "every step exactly once, across the restart"
        assert client.status(job_id)["attempts"] == 1, "the job was reattached, not run again"
        block = pattern_block(job_id)
        assert client.fetch(job_id, tmp_path / "r.glb").read_bytes() == block[:5000]
        client.close()
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_the_ray_executor_without_ray_says_how_to_install_it(tmp_path):
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from mpod123.cli.main import main\n"
        f"sys.exit(main(['serve', '--executor', 'ray', '--data', {str(tmp_path)!r}, '--bind', 'tcp://127.0.0.1:0']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "pip install 'mpod123[ray]'" in out.stdout + out.stderr
