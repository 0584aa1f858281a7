"""The SQLite job store: idempotent submit, contiguous sequence numbers, restart recovery, TTL."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading

import pytest

from backend.store import JobIdReused, JobStore, JobStoreError, StoreDamaged, UnknownJob


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "jobs.sqlite")
    yield s
    s.close()


def new(store, client_id, owner="a", options=None, image=b"img"):
    """Submit and return the server's job id."""
    return store.submit(client_id, owner, options or {}, image)[0].job_id


def test_store_is_wal_with_full_sync(tmp_path, store):
    db = sqlite3.connect(tmp_path / "jobs.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.pragma("synchronous") == 2  # FULL
    assert JobStore(tmp_path / "throwaway.sqlite", synchronous="OFF").pragma("synchronous") == 0
    with pytest.raises(ValueError):
        store.pragma("synchronous=OFF")


def test_submit_is_idempotent_by_owner_job_id_and_body(store):
    job, created = store.submit("j1", "alice", {"preset": "draft"}, b"img")
    assert created and job.state == "queued" and job.options == {"preset": "draft"} and job.client_id == "j1"
    assert job.job_id != "j1" and len(job.job_id) == 32, "the server makes its own id"
    again, created = store.submit("j1", "alice", {"preset": "draft"}, b"img")
    assert not created and again.job_id == job.job_id and store.image(job.job_id) == b"img"
    with pytest.raises(JobIdReused):
        store.submit("j1", "alice", {"preset": "paper"}, b"img")
    with pytest.raises(JobIdReused):
        store.submit("j1", "alice", {"preset": "draft"}, b"other")
    theirs, created = store.submit("j1", "mallory", {}, b"x")
    assert created and theirs.job_id != job.job_id, "ids are per owner: no oracle, no squatting"
    assert len(store.list()) == 2


def test_other_owners_cannot_see_a_job(store):
    job_id = new(store, "j1", "alice")
    assert store.get_owned("j1", "alice").job_id == job_id
    with pytest.raises(UnknownJob):
        store.get_owned("j1", "mallory")
    assert store.list(owner="mallory") == []


def test_a_damaged_database_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "jobs.sqlite"
    JobStore(path).close()
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)
    path.write_bytes(bytes(data))
    with pytest.raises(StoreDamaged, match="move"):
        JobStore(path, check=True)


def test_an_old_database_gains_the_new_columns_and_keeps_its_jobs(tmp_path):
    path = tmp_path / "jobs.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE jobs (job_id TEXT PRIMARY KEY, owner TEXT NOT NULL, state TEXT NOT NULL, options TEXT NOT NULL,"
        " image BLOB NOT NULL, created REAL NOT NULL, updated REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
        " error TEXT, result_path TEXT, result_sha256 TEXT, result_size INTEGER, last_seq INTEGER NOT NULL DEFAULT 0,"
        " cancel_requested INTEGER NOT NULL DEFAULT 0);"
        "INSERT INTO jobs (job_id, owner, state, options, image, created, updated) VALUES ('old', 'a', 'queued', '{}', x'00', 1, 1);"
    )
    db.commit()
    db.close()
    store = JobStore(path)
    assert store.get_owned("old", "a").job_id == "old"
    store.close()


def test_pages_of_a_list(store):
    ids = [new(store, f"j{i}") for i in range(7)]
    assert [j.job_id for j in store.list(owner="a", offset=2, limit=3)] == ids[2:5]
    assert store.count(owner="a") == 7


def test_state_machine(store):
    j1 = new(store, "j1")
    with pytest.raises(JobStoreError, match="cannot go from queued to done"):
        store.set_state(j1, "done")
    job = store.claim_next()
    assert job.job_id == j1 and job.state == "running" and job.attempts == 1
    assert store.claim_next() is None
    store.set_state(j1, "done")
    with pytest.raises(JobStoreError):
        store.set_state(j1, "running")
    assert store.image(j1) == b"", "the image leaves the database when the job ends"
    with pytest.raises(UnknownJob):
        store.set_state("nope", "running")


def test_claim_is_fifo(store):
    ids = [new(store, f"j{i}") for i in range(3)]
    assert [store.claim_next().job_id for _ in range(3)] == ids


def test_a_clean_stop_gives_the_attempt_back(store):
    j = new(store, "j")
    store.claim_next()
    assert store.requeue(j, "stopped", refund=True).attempts == 0
    store.claim_next()
    assert store.requeue(j, "crashed", refund=False).attempts == 1
    assert store.requeue(j, "again", refund=True) is None, "only a running job goes back"


def test_event_sequence_numbers_are_contiguous_under_concurrency(store):
    j1 = new(store, "j1")

    def writer(k):
        for i in range(50):
            store.append_event(j1, "progress", {"writer": k, "i": i})

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = store.events_since(j1, 0)
    assert [e.seq for e in events] == list(range(1, 201))
    assert store.get(j1).last_seq == 200
    # each writer's events stay in its own order
    for k in range(4):
        assert [e.content["i"] for e in events if e.content["writer"] == k] == list(range(50))
    assert [e.seq for e in store.events_since(j1, 150, limit=10)] == list(range(151, 161))


def test_preview_blobs_round_trip(store):
    j1 = new(store, "j1")
    store.append_event(j1, "preview", {"stage": "outline", "width": 4}, b"\x89PNG\x00\x01")
    (event,) = store.events_since(j1, 0)
    assert event.blob == b"\x89PNG\x00\x01" and event.content["stage"] == "outline"


def test_everything_survives_a_killed_process_and_running_jobs_are_requeued(tmp_path):
    path = tmp_path / "jobs.sqlite"
    script = f"""
import os
from backend.store import JobStore
s = JobStore({str(path)!r}, max_attempts=2)
run = s.submit("run-me", "a", {{"k": 1}}, b"img")[0].job_id
s.submit("waiting", "a", {{}}, b"img")
s.submit("tired", "a", {{}}, b"img")
s.claim_next()
for i in range(5):
    s.append_event(run, "progress", {{"step": i}})
import sqlite3
other = sqlite3.connect({str(path)!r}, isolation_level=None)
other.execute("UPDATE jobs SET state='running', attempts=2 WHERE client_id='tired'")
os.kill(os.getpid(), 9)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    store = JobStore(path, max_attempts=2)
    try:
        run = store.get_owned("run-me", "a").job_id
        assert [e.content["step"] for e in store.events_since(run, 0)] == list(range(5))
        changed = {j.client_id: j for j in store.recover()}
        assert changed["run-me"].state == "queued" and "restarted" in changed["run-me"].error
        assert changed["tired"].state == "failed" and "2 times" in changed["tired"].error
        tired = store.events_since(changed["tired"].job_id, 0)
        assert tired[-1].kind == "failed", "a job recovery fails gets its terminal event"
        assert store.get_owned("waiting", "a").state == "queued"
        assert store.claim_next().job_id == run
        assert store.append_event(run, "progress", {"step": 5}) == 7, "sequence continues after restart"
    finally:
        store.close()


def test_results_expire_after_their_ttl(store, tmp_path):
    result = tmp_path / "r.glb"
    result.write_bytes(b"glb")
    old = new(store, "old")
    store.claim_next()
    work = tmp_path / "work"
    (work / "run").mkdir(parents=True)
    store.set_workdir(old, str(work))
    store.set_result(old, str(result), "abc", 3)
    store.set_state(old, "done")
    fresh = new(store, "fresh")
    now = store.get(old).updated
    assert store.expire(ttl_s=3600, now=now + 10) == []
    assert store.expire(ttl_s=3600, now=now + 7200) == [old]
    assert not result.exists() and not work.exists(), "the result and the work folder go with the job"
    with pytest.raises(UnknownJob):
        store.get(old)
    assert store.get(fresh).state == "queued", "unfinished jobs never expire"


def test_finish_stores_the_state_and_its_event_together(store):
    j1 = new(store, "j1")
    store.claim_next()
    seq = store.finish(j1, "failed", "failed", {"ename": "X", "evalue": "y"}, "X: y")
    job = store.get(j1)
    assert job.state == "failed" and job.error == "X: y" and job.last_seq == seq
    assert store.events_since(j1, seq - 1)[0].kind == "failed"
    with pytest.raises(JobStoreError):
        store.finish(j1, "done", "done", {})
    assert store.get(j1).last_seq == seq, "a refused finish stores no event"
    with pytest.raises(JobStoreError, match="terminal"):
        store.finish(j1, "running", "x", {})


def test_a_runners_read_position_is_stored_with_its_event_or_not_at_all(store):
    j = new(store, "j")
    store.claim_next()
    assert store.cursor(j) is None
    store.set_cursor(j, "runner-1", 0)
    assert store.append_event(j, "progress", {"step": 1}, cursor=("runner-1", 1)) == 1
    assert store.cursor(j) == ("runner-1", 1)
    with pytest.raises(sqlite3.ProgrammingError):  # a value SQLite cannot store: the transaction rolls back
        store.append_event(j, "progress", {"step": 2}, cursor=("runner-1", object()))
    assert store.cursor(j) == ("runner-1", 1) and store.get(j).last_seq == 1, "neither the event nor the cursor"
    store.finish(j, "done", "done", {}, cursor=("runner-1", 2))
    assert store.cursor(j) == ("runner-1", 2) and store.get(j).state == "done"
    store.delete(j)
    assert store.cursor(j) is None, "the cursor goes with its job"


def test_recover_leaves_reattached_jobs_running(store):
    ids = {}
    for name in ("live", "dead"):
        ids[name] = new(store, name)
        store.claim_next()
    changed = store.recover(keep=frozenset({ids["live"]}))
    assert [j.job_id for j in changed] == [ids["dead"]] and store.get(ids["dead"]).state == "queued"
    assert store.get(ids["live"]).state == "running" and store.get(ids["live"]).attempts == 1
