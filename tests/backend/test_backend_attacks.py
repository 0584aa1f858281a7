"""Attacks and faults on the backend, over real loopback sockets with a real store and worker processes.

Each test reproduces one way a client, a fault or a bad input used to get
through (the numbered findings of the backend hardening review) and checks
what must happen instead.
"""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

zmq = pytest.importorskip("zmq")

from backend import protocol  # noqa: E402
from backend.client import BackendError, BackendTimeout  # noqa: E402
from backend.client import Client as LibClient  # noqa: E402
from backend.store import JobStore  # noqa: E402
from backend.protocol import Message  # noqa: E402
from backend.server import Server, ServerConfig  # noqa: E402
from tests.backend_harness import Backend, Client, submit_job  # noqa: E402


@pytest.fixture
def backend(tmp_path):
    b = Backend(tmp_path, workers=2, poll_s=0.02)
    yield b
    b.stop()


def _kinds(client: Client, job_id: str) -> list[str]:
    return [m.content["kind"] for m in client.events if m.job_id == job_id]


# ------------------------------------------------------------------ item 2
def test_a_locked_database_does_not_kill_the_dispatcher_or_its_running_job(tmp_path):
    """A long exclusive lock on the job database made one dispatcher call raise 'database is
    locked'; the thread died, PR_SET_PDEATHSIG killed its worker, and the job stayed running."""
    backend = Backend(tmp_path, workers=2, poll_s=0.02, busy_timeout_s=0.2)  # gives up quickly, as after 30 s
    try:
        c = Client(backend.endpoint)
        job_id, _ = submit_job(c, {"steps": 15, "step_s": 0.05, "result_bytes": 1000})
        c.wait_for("progress", job_id, timeout=30)
        assert backend.store.pragma("busy_timeout") == 200
        other = sqlite3.connect(backend.store.path, isolation_level=None, timeout=5)
        other.execute("BEGIN EXCLUSIVE")
        time.sleep(1.5)
        other.execute("ROLLBACK")
        other.close()
        c.wait_for("done", job_id, timeout=30)
        assert c.request("status", job_id=job_id).content["state"] == "done"
        c.close()
    finally:
        backend.stop()


# ------------------------------------------------------------------ item 3
def test_a_corrupt_event_does_not_take_the_front_door_down(backend):
    c = Client(backend.endpoint)
    job_id, _ = submit_job(c, {"steps": 2, "result_bytes": 100})
    c.wait_for("done", job_id)
    db = sqlite3.connect(backend.store.path, isolation_level=None, timeout=5)
    db.execute("UPDATE events SET content='{not json' WHERE seq=2")
    db.close()
    c2 = Client(backend.endpoint, session="alice")
    reply = c2.request("resume", {"last_seq": 0}, job_id=job_id)
    assert reply.msg_type in ("status_reply", "error")
    time.sleep(0.5)
    c3 = Client(backend.endpoint, session="carol")
    assert c3.request("hello", {"client": "t"}, timeout=5).msg_type == "hello_reply", "the router still answers"
    for x in (c, c2, c3):
        x.close()


# ------------------------------------------------------------------ item 4
def test_a_new_job_under_an_expired_id_never_inherits_the_old_work_folder(backend):
    alice, bob = Client(backend.endpoint, "alice"), Client(backend.endpoint, "bob")
    r = alice.request("submit", {"options": {"steps": 2, "result_bytes": 5000}}, [b"alice's photo"], job_id="photo-1")
    assert r.msg_type == "ack"
    alice.wait_for("done", "photo-1")
    backend.store.expire(0.0)
    work_root = backend.tmp / "data" / "jobs"
    left = [p for p in work_root.iterdir()] if work_root.exists() else []
    assert left == [], f"the expired job's work folder stays: {left}"
    r = bob.request("submit", {"options": {"steps": 2, "result_bytes": 5000}}, [b"bob's other photo"], job_id="photo-1")
    assert r.msg_type == "ack", r.content
    bob.wait_for("done", "photo-1")
    logs = [m.content.get("text", "") for m in bob.events if m.content["kind"] == "log"]
    assert not any("resumed" in t for t in logs), f"bob's job resumed alice's run: {logs}"
    alice.close()
    bob.close()


def test_a_run_refuses_to_resume_on_another_inputs_work_folder(tmp_path):
    """Even with the same work folder (a re-queued job), a different input starts afresh."""
    from backend.demo import demo_job
    from backend.workers import JobContext

    store = JobStore(tmp_path / "jobs.sqlite")
    job, _ = store.submit("x", "alice", {"steps": 1, "result_bytes": 10}, b"first")
    work = tmp_path / "work"
    work.mkdir()
    from backend.workers import prepare_workdir

    prepare_workdir(work, b"first")
    demo_job(JobContext(job.job_id, b"first", {"steps": 1, "result_bytes": 10}, work, store))
    assert (work / "outline.done").exists()
    prepare_workdir(work, b"second")
    assert not (work / "outline.done").exists(), "a checkpoint of another input survived"
    store.close()


# ------------------------------------------------------------------ item 6
def test_subscriptions_are_dropped_after_the_terminal_event_and_on_disconnect(backend):
    c = Client(backend.endpoint)
    jobs = [submit_job(c, {"steps": 1, "result_bytes": 10})[0] for _ in range(3)]
    for j in jobs:
        c.wait_for("done", j)
    for i in range(150):
        x = Client(backend.endpoint)
        assert x.request("resume", {"last_seq": 0}, job_id=jobs[i % 3]).msg_type == "status_reply"
        x.close()
    deadline = time.time() + 10
    while backend.server.subscriptions() and time.time() < deadline:
        time.sleep(0.1)
    assert backend.server.subscriptions() == 0, f"{backend.server.subscriptions()} subscriptions of finished jobs kept"
    c.close()


# ------------------------------------------------------------------ item 8
def test_a_late_reply_is_never_taken_for_the_next_requests(backend):
    c = Client(backend.endpoint)
    a, _ = submit_job(c, {"steps": 1, "result_bytes": 10})
    b, _ = submit_job(c, {"steps": 1, "result_bytes": 10})
    c.wait_for("done", a)
    c.wait_for("done", b)
    lib = LibClient(backend.endpoint, session="alice", timeout_s=0.3)
    with backend.store.held():  # the router is busy: A's reply comes late
        with pytest.raises(BackendTimeout):
            lib.request("list")
    lib.timeout_s = 5
    reply = lib.request("status", job_id=b)
    assert reply.msg_type == "status_reply" and reply.job_id == b, f"got {reply.msg_type} for {reply.job_id}"
    lib.close()
    c.close()


# ------------------------------------------------------------------ item 9
def test_job_ids_belong_to_their_owner_and_a_different_body_is_refused(backend):
    alice, bob = Client(backend.endpoint, "alice"), Client(backend.endpoint, "bob")
    opts = {"steps": 1, "result_bytes": 4096}
    r = alice.request("submit", {"options": opts}, [b"alice-image"], job_id="same")
    assert r.msg_type == "ack" and r.content["created"]
    r = bob.request("submit", {"options": opts}, [b"bob-image"], job_id="same")
    assert r.msg_type == "ack" and r.content["created"], f"bob was refused his own id: {r.content}"
    alice.wait_for("done", "same")
    bob.wait_for("done", "same")
    r = alice.request("submit", {"options": opts}, [b"another image"], job_id="same")
    assert r.msg_type == "error" and r.content["ename"] == "JobIdReused", r.content
    r = alice.request("submit", {"options": {**opts, "seed": 3}}, [b"alice-image"], job_id="same")
    assert r.msg_type == "error" and r.content["ename"] == "JobIdReused", r.content
    r = alice.request("submit", {"options": opts}, [b"alice-image"], job_id="same")
    assert r.msg_type == "ack" and not r.content["created"], "the same body again is the same job"
    assert alice.request("status", job_id="same").content["state"] == "done"
    alice.close()
    bob.close()


# ------------------------------------------------------------------ item 10
def test_curve_without_an_authenticated_user_id_is_refused(tmp_path):
    """A CURVE socket without a ZAP handler admits any key and sets no User-Id: the server must
    not fall back to the client-chosen session."""
    ctx = zmq.Context()
    server_pub, server_sec = zmq.curve_keypair()

    def curve(sock):
        sock.curve_secretkey, sock.curve_publickey, sock.curve_server = server_sec, server_pub, True

    store = JobStore(tmp_path / "jobs.sqlite")
    server = Server(store, ServerConfig(bind="tcp://127.0.0.1:0"), ctx, curve)
    endpoint = server.start()
    try:
        client = LibClient(endpoint, session="victim", timeout_s=5, server_key=server_pub,
                           client_keys=zmq.curve_keypair(), context=ctx)
        try:
            with pytest.raises(BackendError) as err:
                client.submit(b"img", {})
            assert err.value.ename == "Unauthenticated"
        finally:
            client.close()
    finally:
        server.stop()
        store.close()
        ctx.term()


# ------------------------------------------------------------------ item 12
def test_list_is_paginated_and_returns_every_job(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite", synchronous="OFF")  # fill fast; durability is tested elsewhere
    for i in range(7000):  # uuid-like ids, as clients make them: well over one message's worth
        store.submit(f"{i:032x}", "session:alice", {}, b"x")
    server = Server(store, ServerConfig(bind="tcp://127.0.0.1:0"))
    endpoint = server.start()
    try:
        client = LibClient(endpoint, session="alice", timeout_s=10)
        jobs = client.list_jobs()
        assert len(jobs) == 7000 and len({j["job_id"] for j in jobs}) == 7000
        assert jobs[0]["job_id"] == f"{0:032x}" and jobs[-1]["job_id"] == f"{6999:032x}"
        client.close()
    finally:
        server.stop()
        store.close()


def test_an_oversize_image_is_a_clear_error_before_it_is_sent(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    server = Server(store, ServerConfig(bind="tcp://127.0.0.1:0", max_image_bytes=1 << 20))
    endpoint = server.start()
    try:
        client = LibClient(endpoint, session="alice", timeout_s=5)
        t0 = time.monotonic()
        with pytest.raises(BackendError) as err:
            client.submit(b"\0" * (3 << 20), {})
        assert err.value.ename == "ImageTooLarge" and "1048576" in str(err.value)
        assert time.monotonic() - t0 < 3
        assert client.hello()["max_image_bytes"] == 1 << 20
        client.close()
    finally:
        server.stop()
        store.close()


# ------------------------------------------------------------------ item 13
def test_dot_ids_and_long_unicode_ids_never_touch_the_data_root(backend):
    c = Client(backend.endpoint)
    r = c.request("submit", {"options": {"steps": 1, "result_bytes": 10}}, [b"img"], job_id="..")
    assert r.msg_type == "ack", r.content
    c.wait_for("done", "..")
    data = backend.tmp / "data"
    assert not (data / "outline.done").exists() and not list(data.glob("*.done")), "job '..' wrote into the data root"
    r = c.request("submit", {"options": {"steps": 1}}, [b"img"], job_id="é" * 128)
    assert r.msg_type == "error" and r.content["ename"] == "BadField", r.content
    c.close()


def test_a_failed_jobs_log_reveals_no_server_paths_and_images_leave_the_database(backend):
    c = Client(backend.endpoint)
    job_id, _ = submit_job(c, {"steps": 3, "fail_at": 2})
    c.wait_for("failed", job_id)
    logs = " ".join(m.content.get("text", "") for m in c.events if m.job_id == job_id and m.content["kind"] == "log")
    assert "demo failure" in logs
    assert "File \"" not in logs and ".py" not in logs, logs
    done_id, _ = submit_job(c, {"steps": 1, "result_bytes": 10})
    c.wait_for("done", done_id)
    db = sqlite3.connect(backend.store.path)
    sizes = db.execute("SELECT length(image) FROM jobs").fetchall()
    db.close()
    assert sizes and all(s[0] == 0 for s in sizes), f"images kept after the jobs ended: {sizes}"
    c.close()


def test_the_client_survives_thousands_of_duplicate_events(tmp_path):
    """A server (or replay) that repeats old events must not exhaust the client's stack."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.SNDHWM, 0)  # queue every duplicate: none may be dropped on the way
    port = router.bind_to_random_port("tcp://127.0.0.1")
    client = LibClient(f"tcp://127.0.0.1:{port}", session="s", timeout_s=10)
    client.last_seq["j"] = 5

    def serve():
        frames = router.recv_multipart()
        ident, req = frames[0], protocol.decode(frames[1:])
        dup = Message("event", {"kind": "progress"}, job_id="j", seq=1)
        for _ in range(4000):
            router.send_multipart([ident, *protocol.encode(dup)])
        reply = Message("status_reply", {"state": "done", "last_seq": 5}, job_id="j")
        reply.extra_header["parent_msg_id"] = req.msg_id
        router.send_multipart([ident, *protocol.encode(reply)])

    t = threading.Thread(target=serve)
    t.start()
    assert client.status("j")["state"] == "done"
    t.join(10)
    client.close()
    router.close(0)


# ------------------------------------------------------------------ item 5
def test_chunk_credit_comes_back_only_with_the_nonces_of_chunks_read(backend):
    c = Client(backend.endpoint)
    job_id, _ = submit_job(c, {"steps": 1, "result_bytes": 64 * 1024})
    c.wait_for("done", job_id)
    nonces = []
    for _ in range(8):  # the credit: 8 unread chunks
        r = c.request("fetch_chunk", {"offset": 0, "length": 1024}, job_id=job_id)
        assert r.msg_type == "chunk"
        nonces.append(r.content["nonce"])
    r = c.request("fetch_chunk", {"offset": 0, "length": 1024}, job_id=job_id)
    assert r.msg_type == "error" and r.content["ename"] == "TooManyChunks"
    r = c.request("fetch_chunk", {"offset": 0, "length": 1024, "acks": ["guessed", "0" * 16]}, job_id=job_id)
    assert r.msg_type == "error" and r.content["ename"] == "TooManyChunks", "a made-up ack buys nothing"
    r = c.request("fetch_chunk", {"offset": 0, "length": 1024, "acks": nonces[:3]}, job_id=job_id)
    assert r.msg_type == "chunk" and len(r.buffers[0]) == 1024
    assert len(c.download(job_id, chunk=4096)) == 64 * 1024, "a client that reads and acks fetches everything"
    c.close()


def test_a_reading_client_fetches_again_and_again_within_its_credit(backend, tmp_path):
    lib = LibClient(backend.endpoint, session="alice", timeout_s=10)
    job_id = lib.submit(b"img", {"steps": 1, "result_bytes": 64 * 1024})
    assert lib.wait(job_id, timeout_s=30).content["kind"] == "done"
    for i in range(4):  # the last chunks' nonces travel with the next fetch's first request
        out = lib.fetch(job_id, tmp_path / f"r{i}.bin", chunk=4096, in_flight=6)
        assert out.stat().st_size == 64 * 1024
    lib.close()


def test_undecodable_messages_are_dropped_and_counted_not_raised(capfd):
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    client = LibClient(f"tcp://127.0.0.1:{port}", session="s", timeout_s=10)

    def serve():
        frames = router.recv_multipart()
        ident, req = frames[0], protocol.decode(frames[1:])
        for _ in range(50):
            router.send_multipart([ident, b"garbage", b"{", b"}"])
        reply = Message("status_reply", {"state": "queued", "last_seq": 0}, job_id="j")
        reply.extra_header["parent_msg_id"] = req.msg_id
        router.send_multipart([ident, *protocol.encode(reply)])

    t = threading.Thread(target=serve)
    t.start()
    assert client.status("j")["state"] == "queued"
    t.join(10)
    assert client.bad_messages == 50
    assert capfd.readouterr().err.count("does not decode") == 1, "said once, not once per message"
    client.close()
    router.close(0)
