"""The SQLite job store: idempotent submit, contiguous sequence numbers, restart recovery, TTL."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading

import pytest

from backend.jobs import JobStore, JobStoreError, UnknownJob


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "jobs.sqlite")
    yield s
    s.close()


def test_store_is_wal_with_full_sync(tmp_path, store):
    db = sqlite3.connect(tmp_path / "jobs.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_submit_is_idempotent_by_job_id_and_owner(store):
    job, created = store.submit("j1", "alice", {"preset": "draft"}, b"img")
    assert created and job.state == "queued" and job.options == {"preset": "draft"}
    again, created = store.submit("j1", "alice", {"preset": "paper"}, b"other")
    assert not created and again.options == {"preset": "draft"} and store.image("j1") == b"img"
    with pytest.raises(JobStoreError, match="taken"):
        store.submit("j1", "mallory", {}, b"x")
    assert len(store.list()) == 1


def test_other_owners_cannot_see_a_job(store):
    store.submit("j1", "alice", {}, b"")
    assert store.get_owned("j1", "alice").job_id == "j1"
    with pytest.raises(UnknownJob):
        store.get_owned("j1", "mallory")
    assert store.list(owner="mallory") == []


def test_state_machine(store):
    store.submit("j1", "a", {}, b"")
    with pytest.raises(JobStoreError, match="cannot go from queued to done"):
        store.set_state("j1", "done")
    job = store.claim_next()
    assert job.job_id == "j1" and job.state == "running" and job.attempts == 1
    assert store.claim_next() is None
    store.set_state("j1", "done")
    with pytest.raises(JobStoreError):
        store.set_state("j1", "running")
    with pytest.raises(UnknownJob):
        store.set_state("nope", "running")


def test_claim_is_fifo(store):
    for i in range(3):
        store.submit(f"j{i}", "a", {}, b"")
    assert [store.claim_next().job_id for _ in range(3)] == ["j0", "j1", "j2"]


def test_event_sequence_numbers_are_contiguous_under_concurrency(store):
    store.submit("j1", "a", {}, b"")

    def writer(k):
        for i in range(50):
            store.append_event("j1", "progress", {"writer": k, "i": i})

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = store.events_since("j1", 0)
    assert [e.seq for e in events] == list(range(1, 201))
    assert store.get("j1").last_seq == 200
    # each writer's events stay in its own order
    for k in range(4):
        assert [e.content["i"] for e in events if e.content["writer"] == k] == list(range(50))
    assert [e.seq for e in store.events_since("j1", 150, limit=10)] == list(range(151, 161))


def test_preview_blobs_round_trip(store):
    store.submit("j1", "a", {}, b"")
    store.append_event("j1", "preview", {"stage": "outline", "width": 4}, b"\x89PNG\x00\x01")
    (event,) = store.events_since("j1", 0)
    assert event.blob == b"\x89PNG\x00\x01" and event.content["stage"] == "outline"


def test_everything_survives_a_killed_process_and_running_jobs_are_requeued(tmp_path):
    path = tmp_path / "jobs.sqlite"
    script = f"""
import os
from backend.jobs import JobStore
s = JobStore({str(path)!r}, max_attempts=2)
s.submit("run-me", "a", {{"k": 1}}, b"img")
s.submit("waiting", "a", {{}}, b"img")
s.submit("tired", "a", {{}}, b"img")
s.claim_next()
for i in range(5):
    s.append_event("run-me", "progress", {{"step": i}})
s._db.execute("UPDATE jobs SET state='running', attempts=2 WHERE job_id='tired'")
os.kill(os.getpid(), 9)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    store = JobStore(path, max_attempts=2)
    try:
        assert [e.content["step"] for e in store.events_since("run-me", 0)] == list(range(5))
        changed = {j.job_id: j for j in store.recover()}
        assert changed["run-me"].state == "queued" and "restarted" in changed["run-me"].error
        assert changed["tired"].state == "failed" and "2 times" in changed["tired"].error
        assert store.get("waiting").state == "queued"
        assert store.claim_next().job_id == "run-me"
        assert store.append_event("run-me", "progress", {"step": 5}) == 6, "sequence continues after restart"
    finally:
        store.close()


def test_results_expire_after_their_ttl(store, tmp_path):
    result = tmp_path / "r.glb"
    result.write_bytes(b"glb")
    store.submit("old", "a", {}, b"")
    store.claim_next()
    store.set_result("old", str(result), "abc", 3)
    store.set_state("old", "done")
    store.submit("fresh", "a", {}, b"")
    now = store.get("old").updated
    assert store.expire(ttl_s=3600, now=now + 10) == []
    assert store.expire(ttl_s=3600, now=now + 7200) == ["old"]
    assert not result.exists()
    with pytest.raises(UnknownJob):
        store.get("old")
    assert store.get("fresh").state == "queued", "unfinished jobs never expire"


def test_finish_stores_the_state_and_its_event_together(store):
    store.submit("j1", "a", {}, b"")
    store.claim_next()
    seq = store.finish("j1", "failed", "failed", {"ename": "X", "evalue": "y"}, "X: y")
    job = store.get("j1")
    assert job.state == "failed" and job.error == "X: y" and job.last_seq == seq
    assert store.events_since("j1", seq - 1)[0].kind == "failed"
    with pytest.raises(JobStoreError):
        store.finish("j1", "done", "done", {})
    assert store.get("j1").last_seq == seq, "a refused finish stores no event"
    with pytest.raises(JobStoreError, match="terminal"):
        store.finish("j1", "running", "x", {})


def test_a_runners_read_position_is_stored_with_its_event_or_not_at_all(store):
    store.submit("j", "a", {}, b"")
    store.claim_next()
    assert store.cursor("j") is None
    store.set_cursor("j", "runner-1", 0)
    assert store.append_event("j", "progress", {"step": 1}, cursor=("runner-1", 1)) == 1
    assert store.cursor("j") == ("runner-1", 1)
    with pytest.raises(sqlite3.ProgrammingError):  # a value SQLite cannot store: the transaction rolls back
        store.append_event("j", "progress", {"step": 2}, cursor=("runner-1", object()))
    assert store.cursor("j") == ("runner-1", 1) and store.get("j").last_seq == 1, "neither the event nor the cursor"
    store.finish("j", "done", "done", {}, cursor=("runner-1", 2))
    assert store.cursor("j") == ("runner-1", 2) and store.get("j").state == "done"
    store.delete("j")
    assert store.cursor("j") is None, "the cursor goes with its job"


def test_recover_leaves_reattached_jobs_running(store):
    for name in ("live", "dead"):
        store.submit(name, "a", {}, b"")
        store.claim_next()
    changed = store.recover(keep=frozenset({"live"}))
    assert [j.job_id for j in changed] == ["dead"] and store.get("dead").state == "queued"
    assert store.get("live").state == "running" and store.get("live").attempts == 1
