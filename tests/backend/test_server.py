"""The backend over real ZeroMQ sockets on loopback, with a real SQLite store and worker processes.

The client-level tests run once per executor: local worker processes, and a
local Ray (``num_cpus=2``) where each job is a Ray actor.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time

import pytest

zmq = pytest.importorskip("zmq")

from backend import protocol  # noqa: E402
from backend.store import JobStore  # noqa: E402
from backend.protocol import MAGIC  # noqa: E402
from backend.server import Server, ServerConfig  # noqa: E402
from backend.workers import ExecutorConfig, LocalExecutor  # noqa: E402
from tests.backend_harness import Backend, Client, submit_job  # noqa: E402


@pytest.fixture(params=["local", "ray"])
def executor(request):
    """Which executor runs the jobs; "ray" starts the session's local Ray."""
    if request.param == "ray":
        request.getfixturevalue("ray_runtime")
    return request.param


@pytest.fixture
def backend(tmp_path, executor):
    b = Backend(tmp_path, executor)
    yield b
    b.stop()


def test_hello(backend):
    c = Client(backend.endpoint)
    reply = c.request("hello", {"client": "test"})
    assert reply.msg_type == "hello_reply" and "1.0" in reply.content["versions"]
    c.close()


def test_a_jobs_whole_life(backend):
    c = Client(backend.endpoint)
    job_id, ack = submit_job(c, {"steps": 3, "result_bytes": 3_000_000})
    assert ack.content["created"] and ack.content["state"] == "queued"
    done = c.wait_for("done", job_id)
    events = [m for m in c.events if m.job_id == job_id]
    assert [m.seq for m in events] == list(range(1, len(events) + 1)), "in order, no gaps"
    previews = [m for m in events if m.content["kind"] == "preview"]
    assert [p.content["stage"] for p in previews] == ["outline", "detail"]
    assert all(p.buffers[0].startswith(b"\x89PNG") for p in previews)
    data = c.download(job_id)
    assert len(data) == 3_000_000 and done.content["sha256"] == hashlib.sha256(data).hexdigest()
    assert c.request("status", job_id=job_id).content["state"] == "done"
    c.close()


def test_malformed_messages_get_error_replies_and_the_server_lives(backend):
    c = Client(backend.endpoint)
    for frames in ([b"junk"], [MAGIC, b"{", b"}"], [MAGIC, b'{"version":"1.0","msg_type":"submit"}', b"{}"]):
        c.sock.send_multipart(frames)
        reply = c.recv()
        assert reply.msg_type == "error" and reply.content["ename"] and reply.content["evalue"]
    assert c.request("ack", {"state": "x"}, job_id="j").content["ename"] == "UnexpectedMessage"
    assert c.request("hello", {"client": "t"}).msg_type == "hello_reply"
    c.close()


def test_the_same_job_id_twice_runs_once(backend):
    c = Client(backend.endpoint)
    job_id, first = submit_job(c, {"steps": 2})
    _, second = submit_job(c, {"steps": 2}, job_id=job_id)
    assert first.content["created"] and not second.content["created"]
    c.wait_for("done", job_id)
    time.sleep(0.3)
    events = backend.store.events_since(backend.sid(job_id), 0)
    assert sum(e.kind == "done" for e in events) == 1
    assert backend.store.get(backend.sid(job_id)).attempts == 1
    c.close()


def test_another_client_cannot_see_or_cancel_a_job(backend):
    alice, mallory = Client(backend.endpoint, "alice"), Client(backend.endpoint, "mallory")
    job_id, _ = submit_job(alice, {"steps": 2})
    for msg_type in ("status", "cancel", "result_info"):
        assert mallory.request(msg_type, job_id=job_id).content["ename"] == "UnknownJob"
    assert mallory.request("resume", {"last_seq": 0}, job_id=job_id).content["ename"] == "UnknownJob"
    assert mallory.request("list").content["jobs"] == []
    assert [j["job_id"] for j in alice.request("list").content["jobs"]] == [job_id]
    alice.close()
    mallory.close()


def test_resume_after_a_disconnect_has_no_gaps_or_duplicates(backend):
    c = Client(backend.endpoint)
    job_id, _ = submit_job(c, {"steps": 6, "step_s": 0.05})
    first = c.wait_for("progress", job_id)
    seen = [m.seq for m in c.events if m.job_id == job_id]
    c.close()
    time.sleep(0.3)  # events keep coming while nobody listens
    c2 = Client(backend.endpoint)
    status = c2.request("resume", {"last_seq": seen[-1]}, job_id=job_id)
    assert status.msg_type == "status_reply"
    c2.wait_for("done", job_id)
    rest = [m.seq for m in c2.events if m.job_id == job_id]
    assert seen + rest == list(range(1, rest[-1] + 1)), (seen, rest)
    assert first.seq == 1
    c2.close()


def test_cancel_stops_a_running_job_within_seconds(backend):
    c = Client(backend.endpoint)
    job_id, _ = submit_job(c, {"steps": 200, "step_s": 0.05})
    c.wait_for("progress", job_id)
    t0 = time.time()
    assert c.request("cancel", job_id=job_id).msg_type == "cancel_reply"
    c.wait_for("cancelled", job_id, timeout=10)
    assert time.time() - t0 < 5
    assert backend.store.get(backend.sid(job_id)).state == "cancelled"
    assert c.request("result_info", job_id=job_id).content["ename"] == "NotReady"
    c.close()


def test_a_job_deaf_to_cancel_is_stopped_by_force_after_the_grace_period(tmp_path, executor):
    b = Backend(tmp_path, executor, cancel_grace_s=1.0)
    try:
        c = Client(b.endpoint)
        job_id, _ = submit_job(c, {"steps": 200, "step_s": 0.05, "ignore_cancel": True})
        c.wait_for("progress", job_id)
        pid = b.executor.worker_pids()[b.sid(job_id)]
        t0 = time.time()
        c.request("cancel", job_id=job_id)
        cancelled = c.wait_for("cancelled", job_id, timeout=20)
        assert time.time() - t0 < 8
        assert "grace period" in cancelled.content["reason"]
        deadline = time.time() + 10
        while _alive(pid) and time.time() < deadline:
            time.sleep(0.1)
        assert not _alive(pid), "the worker was killed, not left running"
        c.close()
    finally:
        b.stop()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"  # a zombie has already exited
    except (FileNotFoundError, IndexError):
        return False


def test_a_killed_worker_requeues_and_the_job_still_completes(backend):
    c = Client(backend.endpoint)
    job_id, _ = submit_job(c, {"steps": 20, "step_s": 0.05})
    c.wait_for("progress", job_id)
    pid = backend.executor.worker_pids()[backend.sid(job_id)]
    os.kill(pid, signal.SIGKILL)
    c.wait_for("done", job_id, timeout=60)
    job = backend.store.get(backend.sid(job_id))
    assert job.state == "done" and job.attempts == 2
    logs = [e.content["text"] for e in backend.store.events_since(backend.sid(job_id), 0) if e.kind == "log"]
    assert any("re-queued" in t for t in logs)
    c.close()


def test_a_worker_killed_on_its_last_attempt_fails_the_job(tmp_path, executor):
    b = Backend(tmp_path, executor, max_attempts=1)
    try:
        c = Client(b.endpoint)
        job_id, _ = submit_job(c, {"steps": 50, "step_s": 0.05})
        c.wait_for("progress", job_id)
        os.kill(b.executor.worker_pids()[b.sid(job_id)], signal.SIGKILL)
        failed = c.wait_for("failed", job_id, timeout=30)
        assert failed.content["ename"] == "WorkerDied" and "giving up" in failed.content["evalue"]
        if executor == "local":
            assert "-9" in failed.content["evalue"], "the exit code says it was killed"
        else:
            assert "died" in failed.content["evalue"]
        c.close()
    finally:
        b.stop()


def test_the_watchdog_fails_a_silent_job(tmp_path, executor):
    b = Backend(tmp_path, executor, watchdog_s=0.5)
    try:
        c = Client(b.endpoint)
        job_id, _ = submit_job(c, {"steps": 2, "step_s": 3.0})
        failed = c.wait_for("failed", job_id, timeout=30)
        assert failed.content["ename"] == "Watchdog"
        c.close()
    finally:
        b.stop()


def test_a_failing_job_reports_why(backend):
    c = Client(backend.endpoint)
    job_id, _ = submit_job(c, {"steps": 3, "fail_at": 2})
    failed = c.wait_for("failed", job_id)
    assert "demo failure" in failed.content["evalue"]
    assert c.request("status", job_id=job_id).content["state"] == "failed"
    c.close()


def test_a_restarted_backend_finishes_interrupted_jobs_and_keeps_their_events(tmp_path, executor):
    b = Backend(tmp_path, executor)
    c = Client(b.endpoint)
    job_id, _ = submit_job(c, {"steps": 30, "step_s": 0.05})
    c.wait_for("progress", job_id)
    before = [e.seq for e in b.store.events_since(b.sid(job_id), 0)]
    b.stop()  # workers killed with the backend
    c.close()
    b2 = Backend(tmp_path, executor)
    try:
        c2 = Client(b2.endpoint)
        c2.request("resume", {"last_seq": 0}, job_id=job_id)
        c2.wait_for("done", job_id, timeout=60)
        seqs = [m.seq for m in c2.events if m.job_id == job_id]
        assert seqs == list(range(1, seqs[-1] + 1)) and seqs[: len(before)] == before
        c2.download(job_id)
        c2.close()
    finally:
        b2.stop()


def test_limits_refuse_with_a_reason(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    server = Server(store, ServerConfig(bind="tcp://127.0.0.1:0", max_image_bytes=10, max_jobs_per_client=1))
    endpoint = server.start()
    try:
        c = Client(endpoint)
        big = c.request("submit", {"options": {}}, [b"x" * 11], job_id="a")
        assert big.content["ename"] == "ImageTooLarge"
        assert c.request("submit", {"options": {}}, [b"x"], job_id="b").msg_type == "ack"
        assert c.request("submit", {"options": {}}, [b"x"], job_id="c").content["ename"] == "TooManyJobs"
        c.close()
    finally:
        server.stop()
        store.close()


def test_the_client_downloads_in_chunks_resumes_a_partial_file_and_checks_the_hash(backend, tmp_path):
    from backend.client import BackendError
    from backend.client import Client as RealClient

    with RealClient(backend.endpoint, session="alice") as c:
        job_id = c.submit(b"\x89PNG img", {"steps": 1, "result_bytes": 5_000_000})
        assert c.wait(job_id, timeout_s=60).content["kind"] == "done"
        full = c.fetch(job_id, tmp_path / "a.glb", chunk=1 << 20, in_flight=3).read_bytes()
        assert len(full) == 5_000_000
        part = tmp_path / "b.glb.part"
        part.write_bytes(full[:1_500_000])  # an interrupted earlier download
        assert c.fetch(job_id, tmp_path / "b.glb", chunk=1 << 20).read_bytes() == full
        assert not part.exists()
        (tmp_path / "c.glb.part").write_bytes(b"corrupt" * 1000)
        with pytest.raises(BackendError, match="ChecksumMismatch"):
            c.fetch(job_id, tmp_path / "c.glb")
        assert not (tmp_path / "c.glb").exists(), "a bad download never becomes the result"
        with pytest.raises(BackendError, match="UnknownJob"):
            c.status("no-such-job")


def test_fuzzed_frames_over_the_socket_each_get_an_error_reply(tmp_path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    store = JobStore(tmp_path / "jobs.sqlite")
    server = Server(store, ServerConfig(bind="tcp://127.0.0.1:0"))
    endpoint = server.start()
    c = Client(endpoint)
    header = st.fixed_dictionaries(
        {"msg_type": st.sampled_from(sorted(protocol.MSG_TYPES) + ["bogus"]), "version": st.sampled_from(["1.0", "0.1"])},
        optional={"msg_id": st.text(max_size=5), "session": st.integers(), "job_id": st.text(max_size=5), "seq": st.text()},
    )
    garbage = st.lists(st.binary(max_size=40), min_size=1, max_size=5)
    structured = st.tuples(header, st.dictionaries(st.text(max_size=5), st.integers(), max_size=3)).map(
        lambda hc: [MAGIC, __import__("json").dumps(hc[0]).encode(), __import__("json").dumps(hc[1]).encode()]
    )

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(garbage, structured))
    def one(frames):
        c.sock.send_multipart(frames)
        reply = c.recv(timeout=5)
        if reply.msg_type != "error":  # a well-formed request may be valid: it gets a real reply
            assert reply.msg_type.endswith("_reply") or reply.msg_type in ("ack", "chunk")

    try:
        one()
        assert c.request("hello", {"client": "after fuzz"}).msg_type == "hello_reply"
    finally:
        c.close()
        server.stop()
        store.close()


def test_workers_are_pinned_one_gpu_each(tmp_path, monkeypatch):
    from backend.workers import visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert visible_gpus() == ["2", "5"]
    store = JobStore(tmp_path / "jobs.sqlite")
    executor = LocalExecutor(store, tmp_path / "data", ExecutorConfig(job_fn="tests.gpu_probe_job:report_gpu"))
    assert executor.workers == 2
    try:
        ids = [store.submit(name, "o", {"step_s": 0.5}, b"img")[0].job_id for name in ("a", "b")]
        executor.tick()
        time.sleep(0.2)
        executor.tick()
        deadline = time.time() + 30
        while any(store.get(j).state != "done" for j in ids) and time.time() < deadline:
            executor.tick()
            time.sleep(0.05)
        seen = sorted(next(e.content["gpu"] for e in store.events_since(j, 0) if e.kind == "log") for j in ids)
        assert seen == ["2", "5"], "two concurrent jobs, one on each GPU"
    finally:
        executor.stop()
        store.close()
