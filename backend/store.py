"""The durable job store: SQLite in WAL mode with synchronous=FULL.

Jobs, their states, their events (each with a per-job sequence number) and
their results survive a restart of the backend. A job has two names: the
client's ``client_id``, unique per owner (two owners may both use ``photo-1``),
and the server-made ``job_id`` (a random hex string) that everything inside
the backend uses: work folders, result files, Ray actors. So a client id never
becomes a path, and a new job never meets an old job's files. A submit is
idempotent by (owner, client id) with the same body (image sha256 and
options); the same id with another body is refused (:class:`JobIdReused`).
:meth:`JobStore.submit` returns only after the transaction has committed, so
an ``ack`` sent after it is a promise the store keeps. Event sequence numbers are assigned inside the same transaction that
stores the event, so they are contiguous from 1 with no gaps or duplicates,
whichever thread appends.

States: queued -> running -> done | failed | cancelled, and queued -> cancelled.
On start-up :meth:`recover` re-queues jobs left running by a dead backend (up
to ``max_attempts``) and fails the rest through :meth:`finish`, so their
clients get a terminal event. A job stopped by a clean shutdown is re-queued
with its attempt given back (:meth:`requeue`). The image is dropped once the
job ends (only its sha256 stays), and :meth:`delete` removes the result file
and the work folder with the job. The store runs ``PRAGMA quick_check`` when it
opens and refuses a damaged database with a message saying what to do.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .protocol import MAX_ERROR_CHARS

STATES = ("queued", "running", "done", "failed", "cancelled")
TERMINAL = frozenset({"done", "failed", "cancelled"})
TRANSITIONS = {"queued": {"running", "cancelled", "failed"}, "running": {"done", "failed", "cancelled", "queued"},
               **{state: set() for state in TERMINAL}}

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    options TEXT NOT NULL,
    image BLOB NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    result_path TEXT,
    result_sha256 TEXT,
    result_size INTEGER,
    last_seq INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    client_id TEXT,
    image_sha256 TEXT,
    workdir TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, created);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL REFERENCES jobs(job_id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    created REAL NOT NULL,
    kind TEXT NOT NULL,
    content TEXT NOT NULL,
    blob BLOB,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS cursors (
    job_id TEXT PRIMARY KEY REFERENCES jobs(job_id) ON DELETE CASCADE,
    runner TEXT NOT NULL,
    position INTEGER NOT NULL
);
"""


class JobStoreError(RuntimeError):
    """A request the store refuses; the message says why."""


class UnknownJob(JobStoreError):
    """No such job, or another owner's (which looks the same)."""


class JobIdReused(JobStoreError):
    """The owner already has a job under this id, with another image or other options."""


class StoreDamaged(JobStoreError):
    """The database file fails its integrity check."""


@dataclass(frozen=True)
class Job:
    job_id: str
    owner: str
    state: str
    options: dict[str, Any]
    created: float
    updated: float
    attempts: int
    error: str | None
    result_path: str | None
    result_sha256: str | None
    result_size: int | None
    last_seq: int
    client_id: str = ""
    """The id the client chose (unique per owner); ``job_id`` is the server's own."""
    workdir: str | None = None


@dataclass(frozen=True)
class Event:
    job_id: str
    seq: int
    created: float
    kind: str
    content: dict[str, Any]
    blob: bytes | None


_JOB_COLUMNS = ("job_id, owner, state, options, created, updated, attempts, error, result_path, result_sha256, "
                "result_size, last_seq, client_id, workdir")
_MIGRATIONS = (("client_id", "TEXT"), ("image_sha256", "TEXT"), ("workdir", "TEXT"))


def _job_filter(owner: str | None, states: tuple[str, ...]) -> tuple[str, list[Any]]:
    """The WHERE clause (and its parameters) that ``list`` and ``count`` share: jobs in ``states``, of ``owner``."""
    where = f"state IN ({','.join('?' * len(states))})"
    params: list[Any] = list(states)
    if owner is not None:
        where += " AND owner=?"
        params.append(owner)
    return where, params


DAMAGED = "_damaged"
"""The key of the options of a job whose stored options no longer parse (its worker fails it)."""


def _options(text: object) -> dict[str, Any]:
    """A job's stored options; a damaged row reads as ``{DAMAGED: why}`` instead of raising, so one
    bad row fails that job (with a terminal event) and never stops listing, recovery or a start."""
    try:
        options = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return {DAMAGED: "the job's stored options do not parse"}
    return options if isinstance(options, dict) else {DAMAGED: "the job's stored options are not an object"}


def _job(row: tuple) -> Job:
    return Job(row[0], row[1], row[2], _options(row[3]), *row[4:12], row[12] or row[0], row[13])


def _body_digest(options: dict[str, Any], image: bytes) -> str:
    return hashlib.sha256(image).hexdigest() + ":" + hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()


class JobStore:
    """Thread-safe: one connection guarded by a lock (SQLite serialises writers anyway)."""

    def __init__(self, path: str | Path, max_attempts: int = 2, busy_timeout_s: float = 30.0, check: bool = False,
                 synchronous: str = "FULL") -> None:
        """``check``: ``PRAGMA quick_check`` first (serve does, once); ``synchronous="OFF"``: only for throwaway stores."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_attempts = max_attempts
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=busy_timeout_s)
        try:
            if check:
                problems = [r[0] for r in self._db.execute("PRAGMA quick_check").fetchall()]
                if problems != ["ok"]:
                    raise StoreDamaged(
                        f"the job database {self.path} is damaged ({'; '.join(problems[:3])}); stop the backend, "
                        "move the file away (or restore a copy) and start again: a new, empty database is made"
                    )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'OFF' if synchronous == 'OFF' else 'FULL'}")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreDamaged(f"cannot open the job database {self.path}: {exc}; move it away and start again") from None
        except BaseException:
            self._db.close()
            raise

    def pragma(self, name: str) -> Any:
        """This connection's setting ``name`` (``synchronous``, ``journal_mode``, ``busy_timeout``...), read only."""
        if not name.isidentifier():
            raise ValueError(f"not a pragma name: {name!r}")
        with self._lock:
            return self._db.execute(f"PRAGMA {name}").fetchone()[0]

    @contextmanager
    def held(self) -> Iterator[None]:
        """Every other thread's store call waits until this block ends (a consistent copy; a busy router in tests)."""
        with self._lock:
            yield

    def _migrate(self) -> None:
        """Databases of earlier versions: add the new columns; old jobs keep their id as the client's."""
        have = {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}
        with self._tx() as db:
            for name, kind in _MIGRATIONS:
                if name not in have:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
            db.execute("UPDATE jobs SET client_id=job_id WHERE client_id IS NULL")
            db.execute("CREATE UNIQUE INDEX IF NOT EXISTS jobs_owner_client ON jobs(owner, client_id)")

    def close(self) -> None:
        with self.held():
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ----------------------------------------------------------------- jobs
    def submit(self, client_id: str, owner: str, options: dict[str, Any], image: bytes) -> tuple[Job, bool]:
        """Store a new queued job; returns (job, created).

        The same (owner, client id) with the same image and options returns the existing job;
        with another body it raises :class:`JobIdReused`. Another owner's job under the same
        client id is none of this owner's business: it gets its own job.
        """
        now = time.time()
        body = _body_digest(options, image)
        with self._tx() as db:
            row = db.execute(
                "SELECT job_id, image_sha256 FROM jobs WHERE owner=? AND client_id=?", (owner, client_id)
            ).fetchone()
            if row is not None:
                if row[1] is not None and row[1] != body:
                    raise JobIdReused(
                        f"job id {client_id!r} is already yours, for another image or other options; "
                        "choose a new id (or resubmit exactly the same image and options to find that job)"
                    )
                job_id, created = row[0], False
            else:
                job_id, created = uuid.uuid4().hex, True
                db.execute(
                    "INSERT INTO jobs (job_id, client_id, owner, state, options, image, image_sha256, created, updated) "
                    "VALUES (?,?,?,?,?,?,?,?,?)",
                    (job_id, client_id, owner, "queued", json.dumps(options), image, body, now, now),
                )
            # read back inside the transaction: the job as committed, before a worker can claim it
            row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return _job(row), created

    def _one(self, query: str, params: tuple, name: str) -> tuple:
        """The one row ``query`` finds; :class:`UnknownJob` naming ``name`` when there is none."""
        with self._lock:
            row = self._db.execute(query, params).fetchone()
        if row is None:
            raise UnknownJob(f"no job {name!r}")
        return row

    def get(self, job_id: str) -> Job:
        return _job(self._one(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id=?", (job_id,), job_id))

    def get_owned(self, client_id: str, owner: str) -> Job:
        """``owner``'s job named ``client_id``; another owner's job looks exactly like a missing one."""
        return _job(self._one(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE owner=? AND client_id=?", (owner, client_id),
                              client_id))

    def image(self, job_id: str) -> bytes:
        return bytes(self._one("SELECT image FROM jobs WHERE job_id=?", (job_id,), job_id)[0])

    def list(self, owner: str | None = None, states: tuple[str, ...] = STATES, offset: int = 0,
             limit: int | None = None) -> list[Job]:
        """Jobs in ``states`` (of ``owner``), oldest first; ``offset``/``limit`` give one page."""
        where, params = _job_filter(owner, states)
        query = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {where} ORDER BY created, rowid LIMIT ? OFFSET ?"
        params += [-1 if limit is None else limit, offset]
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        return [_job(r) for r in rows]

    def count(self, owner: str | None = None, states: tuple[str, ...] = STATES) -> int:
        where, params = _job_filter(owner, states)
        with self._lock:
            return self._db.execute(f"SELECT count(*) FROM jobs WHERE {where}", params).fetchone()[0]

    def set_state(self, job_id: str, state: str, error: str | None = None) -> Job:
        """Move a job along the state machine; an impossible move raises."""
        if state not in STATES:
            raise JobStoreError(f"unknown state {state!r}")
        with self._tx() as db:
            self._move(db, job_id, state, error)
        return self.get(job_id)

    def _move(self, db: sqlite3.Connection, job_id: str, state: str, error: str | None) -> None:
        """Inside a transaction: change a job's state if the state machine allows it."""
        row = db.execute("SELECT state FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        if row is None:
            raise UnknownJob(f"no job {job_id!r}")
        if state not in TRANSITIONS[row[0]]:
            raise JobStoreError(f"job {job_id!r} cannot go from {row[0]} to {state}")
        if error is not None and len(error) > MAX_ERROR_CHARS:  # a job's exception can be any size
            error = error[:MAX_ERROR_CHARS] + " [...]"
        db.execute("UPDATE jobs SET state=?, error=?, updated=? WHERE job_id=?", (state, error, time.time(), job_id))
        if state in TERMINAL:  # the image is not needed any more; its sha256 stays for resubmits
            db.execute("UPDATE jobs SET image=x'' WHERE job_id=?", (job_id,))

    def claim_next(self) -> Job | None:
        """Atomically take the oldest queued job and mark it running (attempts + 1)."""
        with self._tx() as db:
            row = db.execute("SELECT job_id FROM jobs WHERE state='queued' ORDER BY created, job_id LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state='running', attempts=attempts+1, updated=? WHERE job_id=?", (time.time(), row[0])
            )
        return self.get(row[0])

    def requeue(self, job_id: str, reason: str, refund: bool) -> Job | None:
        """Put a running job back in the queue; ``refund`` gives back the attempt it was charged
        (a clean shutdown, or a worker that never started, is not the job's failure).
        Returns None if the job was no longer running."""
        with self._tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE job_id=?", (job_id,)).fetchone()
            if row is None or row[0] != "running":
                return None
            db.execute(
                "UPDATE jobs SET state='queued', error=?, updated=?, attempts=max(0, attempts-?) WHERE job_id=?",
                (reason, time.time(), 1 if refund else 0, job_id),
            )
        return self.get(job_id)

    def set_workdir(self, job_id: str, path: str) -> None:
        """Where the job's files live (deleted with the job)."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET workdir=? WHERE job_id=?", (path, job_id))

    def recover(self, keep: frozenset[str] = frozenset()) -> list[Job]:
        """After a restart: re-queue jobs left running, or fail those out of attempts (with a
        terminal event, so a client waiting on one is told).

        Jobs in ``keep`` are left running: an executor whose jobs outlive the
        backend (a Ray cluster) has reattached to them.
        """
        changed = []
        for job in self.list(states=("running",)):
            if job.job_id in keep:
                continue
            if job.attempts < self.max_attempts:
                self.append_event(job.job_id, "log", {"text": "the backend restarted; the job is re-queued"})
                changed.append(self.set_state(job.job_id, "queued", "re-queued after the backend restarted"))
            else:
                reason = f"the job was interrupted {job.attempts} times; giving up"
                self.finish(job.job_id, "failed", "failed", {"ename": "Interrupted", "evalue": reason}, f"Interrupted: {reason}")
                changed.append(self.get(job.job_id))
        return changed

    def request_cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once; flag a running one for its worker to stop cooperatively."""
        with self._tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE job_id=?", (job_id,)).fetchone()
            if row is None:
                raise UnknownJob(f"no job {job_id!r}")
            if row[0] == "queued":  # terminal at once: its event ends every wait, and the image goes
                reason = "cancelled before it started"
                self._move(db, job_id, "cancelled", reason)
                self._insert_event(db, job_id, "cancelled", {"reason": reason}, None)
            elif row[0] == "running":
                db.execute("UPDATE jobs SET cancel_requested=1, updated=? WHERE job_id=?", (time.time(), job_id))
        return self.get(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT cancel_requested FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return bool(row and row[0])

    def set_result(self, job_id: str, path: str, sha256: str, size: int) -> None:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET result_path=?, result_sha256=?, result_size=?, updated=? WHERE job_id=?",
                (path, sha256, size, time.time(), job_id),
            )
            if cur.rowcount == 0:
                raise UnknownJob(f"no job {job_id!r}")

    def delete(self, job_id: str) -> None:
        """Forget a job, its events, its result file and its work folder."""
        job = self.get(job_id)
        with self._tx() as db:
            db.execute("DELETE FROM jobs WHERE job_id=?", (job_id,))
        if job.result_path:
            Path(job.result_path).unlink(missing_ok=True)
        if job.workdir:
            shutil.rmtree(job.workdir, ignore_errors=True)

    def expire(self, ttl_s: float, now: float | None = None) -> list[str]:
        """Delete finished jobs whose last update is older than ``ttl_s``; returns their ids."""
        cutoff = (now if now is not None else time.time()) - ttl_s
        old = [j.job_id for j in self.list(states=tuple(TERMINAL)) if j.updated < cutoff]
        for job_id in old:
            self.delete(job_id)
        return old

    # --------------------------------------------------------------- events
    def _insert_event(self, db: sqlite3.Connection, job_id: str, kind: str, content: dict[str, Any], blob: bytes | None) -> int:
        row = db.execute("SELECT last_seq FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        if row is None:
            raise UnknownJob(f"no job {job_id!r}")
        seq = row[0] + 1
        db.execute("INSERT INTO events (job_id, seq, created, kind, content, blob) VALUES (?,?,?,?,?,?)",
                   (job_id, seq, time.time(), kind, json.dumps(content), blob))
        db.execute("UPDATE jobs SET last_seq=?, updated=? WHERE job_id=?", (seq, time.time(), job_id))
        return seq

    def append_event(
        self, job_id: str, kind: str, content: dict[str, Any], blob: bytes | None = None, cursor: tuple[str, int] | None = None
    ) -> int:
        """Store an event and return its sequence number (1, 2, 3, ... per job).

        ``cursor`` = (runner, position) is stored in the same transaction: how far
        an executor has read a remote runner's own event list, so that after a
        backend restart it resumes reading exactly after the last stored event.
        """
        with self._tx() as db:
            seq = self._insert_event(db, job_id, kind, content, blob)
            if cursor is not None:
                self._put_cursor(db, job_id, *cursor)
            return seq

    # -------------------------------------------------------------- cursors
    def _put_cursor(self, db: sqlite3.Connection, job_id: str, runner: str, position: int) -> None:
        db.execute(
            "INSERT INTO cursors (job_id, runner, position) VALUES (?,?,?) "
            "ON CONFLICT(job_id) DO UPDATE SET runner=excluded.runner, position=excluded.position",
            (job_id, runner, position),
        )

    def set_cursor(self, job_id: str, runner: str, position: int) -> None:
        """Record that ``runner`` (a remote job runner's name) has been read up to ``position``."""
        with self._tx() as db:
            self._put_cursor(db, job_id, runner, position)

    def cursor(self, job_id: str) -> tuple[str, int] | None:
        """(runner, position) of the job's remote runner, or None if it never had one."""
        with self._lock:
            row = self._db.execute("SELECT runner, position FROM cursors WHERE job_id=?", (job_id,)).fetchone()
        return None if row is None else (row[0], row[1])

    def finish(
        self, job_id: str, state: str, kind: str, content: dict[str, Any], error: str | None = None,
        cursor: tuple[str, int] | None = None,
    ) -> int:
        """Move a job to a terminal ``state`` and store its final event in one transaction,
        so a client that sees the event always finds the job in that state."""
        if state not in TERMINAL:
            raise JobStoreError(f"{state} is not a terminal state")
        with self._tx() as db:
            self._move(db, job_id, state, error)
            seq = self._insert_event(db, job_id, kind, content, None)
            if cursor is not None:
                self._put_cursor(db, job_id, *cursor)
            return seq

    def events_since(self, job_id: str, last_seq: int, limit: int = 1000) -> list[Event]:
        """Events with seq > ``last_seq``, in order (what a resuming client missed).

        A stored event whose content no longer parses is handed out as a ``log`` event that
        says so, rather than raising: one damaged row must not stop a job's stream."""
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id, seq, created, kind, content, blob FROM events WHERE job_id=? AND seq>? ORDER BY seq LIMIT ?",
                (job_id, last_seq, limit),
            ).fetchall()
        events = []
        for r in rows:
            try:
                content = json.loads(r[4])
                if not isinstance(content, dict):
                    raise ValueError("not an object")
                events.append(Event(r[0], r[1], r[2], r[3], content, None if r[5] is None else bytes(r[5])))
            except (ValueError, TypeError):
                events.append(Event(r[0], r[1], r[2], "log", {"text": f"event {r[1]} is damaged in the store"}, None))
        return events
