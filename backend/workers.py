"""Executors: where jobs run. The default runs local worker processes, one per GPU (one on a CPU).

A dispatcher thread claims queued jobs from the store and starts one process
per job (``spawn``, so no socket or lock is inherited). The process runs the
job function with a :class:`JobContext`; every event it emits goes straight
into the SQLite store (its own connection), which is the single source of
truth that the server forwards from. The dispatcher also:

* reaps processes: one that died without finishing its job (a crash, a
  SIGKILL, the OOM killer) re-queues the job while it has attempts left and
  otherwise fails it with the exit code, so a job never hangs;
* runs the watchdog: a running job with no event for ``watchdog_s`` is killed
  and failed;
* enforces cancel: the worker stops cooperatively at its next step once the
  store says so; after ``cancel_grace_s`` it is killed.

The dispatcher never dies of one error: a failed round (the database locked
for longer than its busy timeout, ``EMFILE`` while starting a worker) is
logged and retried on the next round, and a job whose worker could not start
goes back to the queue with its attempt given back. This matters twice over:
the workers are started by this thread, and ``PR_SET_PDEATHSIG`` kills them
when the thread that started them exits. Only when rounds keep failing for
``give_up_s`` does the executor declare itself failed (:attr:`LocalExecutor.failure`),
and ``serve`` then exits non-zero so that a service manager restarts it.

A stop (``serve`` told to stop) kills the workers and re-queues their jobs
with the attempt given back: a clean shutdown is not the job's failure.

A job's work folder is ``DATA/jobs/<server job id>`` (never the client's id)
and holds the sha256 of the input it was made for; a run on another input
finds it emptied first (:func:`prepare_workdir`), so no checkpoint is ever
resumed on the wrong image.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import multiprocessing as mp
import os
import re
import shutil
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .store import DAMAGED, TERMINAL, JobStore, UnknownJob
from .protocol import MAX_ERROR_CHARS, file_digest

log = logging.getLogger(__name__)
INPUT_STAMP = "input.sha256"


class JobCancelled(Exception):
    """Raised inside a job function when its job was cancelled."""


@dataclass
class JobContext:
    job_id: str
    """The server's id of the job (a random hex string)."""
    image: bytes
    options: dict[str, Any]
    workdir: Path
    store: JobStore
    client_id: str = ""
    """The id the client chose (for what the client sees; never a path)."""

    def emit(self, kind: str, content: dict[str, Any], blob: bytes | None = None) -> int:
        """Store an event (progress, preview, stage_done, log) and return its sequence number."""
        return self.store.append_event(self.job_id, kind, content, blob)

    def check_cancel(self) -> None:
        if self.store.cancel_requested(self.job_id):
            raise JobCancelled("cancelled by the client")


JobFn = Callable[[JobContext], str]


def resolve_job_fn(spec: str) -> JobFn:
    """``"package.module:function"`` to the function."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"job function must look like 'module:function', got {spec!r}")
    return getattr(importlib.import_module(module), name)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when the backend dies, so that a restarted backend
    never finds an orphan still running the job it re-queues. Elsewhere this is a no-op."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def prepare_workdir(workdir: Path, image: bytes) -> None:
    """Make ``workdir`` ready for a run on ``image``: a folder made for another input is emptied
    first, so a run resumes only its own checkpoints."""
    digest = hashlib.sha256(image).hexdigest()
    stamp = workdir / INPUT_STAMP
    if workdir.exists() and (not stamp.is_file() or stamp.read_text().strip() != digest):
        if any(p.name != INPUT_STAMP for p in workdir.iterdir()):
            shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest + "\n")


def public_error(exc: BaseException) -> str:
    """What a client is told about a job's exception: its type and message (cut to a fixed size),
    no server paths."""
    return scrub_paths("".join(traceback.format_exception_only(type(exc), exc)).strip())[-MAX_ERROR_CHARS:]


_PATH = re.compile(r"(?<![\w.:/])(?:~|[A-Za-z]:)?(?:[\\/][^\s\\/'\"():,;]+){2,}")


def scrub_paths(text: str) -> str:
    """``text`` with every absolute path cut to its last part (``.../name``): errors and log events
    tell the client what failed, never where the server keeps its files, caches or interpreter."""
    return _PATH.sub(lambda m: ".../" + re.split(r"[\\/]", m.group(0))[-1], text)


STORE_LOCKED_STATUS = 75
"""A worker's exit code when the job database stayed locked past its busy timeout: the job is
re-queued with its attempt given back (a long lock is not the job's failure)."""


def database_locked(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite giving up on a lock held past the busy timeout (not the job's fault)."""
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


def run_job(
    db_path: str, job_id: str, job_fn: str, data_dir: str, parent_pid: int | None = None, gpu: str | None = None,
    busy_timeout_s: float = 30.0,
) -> None:
    """The worker process's entry point: run one job to a terminal state (on one GPU, if given)."""
    _die_with_parent()
    if gpu is not None:  # before anything imports torch: this process sees exactly one GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    if parent_pid is not None and os.getppid() != parent_pid:
        return  # the backend died before we got here; it will re-queue the job
    store = JobStore(db_path, busy_timeout_s=busy_timeout_s)
    try:
        job = store.get(job_id)
        if DAMAGED in job.options:  # one damaged row fails its job, with a terminal event
            fail_job(store, job_id, "DamagedJob", job.options[DAMAGED] + "; submit the job again")
            return
        workdir = work_folder(data_dir, job_id)
        image = store.image(job_id)
        prepare_workdir(workdir, image)
        ctx = JobContext(job_id, image, job.options, workdir, store, job.client_id)
        try:
            result = Path(resolve_job_fn(job_fn)(ctx))
            publish_result(store, data_dir, job_id, result.suffix, lambda tmp: shutil.copyfile(result, tmp))
        except JobCancelled as exc:
            store.finish(job_id, "cancelled", "cancelled", {"reason": str(exc)}, str(exc))
        except Exception as exc:  # the job's failure: the client gets its type and message, the log the traceback
            if database_locked(exc):
                print(f"mpod123 worker: the job database stayed locked ({exc}); the job goes back to the queue",
                      file=sys.stderr, flush=True)
                os._exit(STORE_LOCKED_STATUS)
            traceback.print_exc(file=sys.stderr)
            store.append_event(job_id, "log", {"text": public_error(exc)})
            fail_job(store, job_id, type(exc).__name__, str(exc))
    finally:
        store.close()


def work_folder(data_dir: str | Path, job_id: str) -> Path:
    """A job's work folder, named by the server's job id."""
    return Path(data_dir) / "jobs" / job_id


def publish_result(
    store: JobStore, data_dir: str | Path, job_id: str, suffix: str, write: Callable[[Path], object],
    cursor: tuple[str, int] | None = None,
) -> None:
    """Put a job's result in the results folder (``write`` fills a temporary file, renamed
    atomically once complete) and finish the job as done with its size and sha256."""
    final = Path(data_dir) / "results" / f"{job_id}{suffix}"
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".tmp")
    write(tmp)
    os.replace(tmp, final)
    digest, size = file_digest(final)
    store.set_result(job_id, str(final), digest, size)
    store.finish(job_id, "done", "done", {"size": size, "sha256": digest}, cursor=cursor)


def fail_job(store: JobStore, job_id: str, ename: str, evalue: str, cursor: tuple[str, int] | None = None) -> None:
    """Finish a job as failed, with the reason the client is shown (cut to a fixed size, no server paths)."""
    evalue = scrub_paths(evalue)
    if len(evalue) > MAX_ERROR_CHARS:
        evalue = evalue[:MAX_ERROR_CHARS] + " [...]"
    store.finish(job_id, "failed", "failed", {"ename": ename, "evalue": evalue}, f"{ename}: {evalue}", cursor=cursor)


@dataclass
class _Running:
    process: mp.process.BaseProcess
    started: float
    cancel_seen: float | None = None
    gpu: str | None = None


def visible_gpus() -> list[str]:
    """GPU ids from CUDA_VISIBLE_DEVICES, else from /proc (Linux, NVIDIA), else none."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    proc = Path("/proc/driver/nvidia/gpus")
    return [str(i) for i in range(len(list(proc.iterdir())))] if proc.is_dir() else []


@dataclass
class ExecutorConfig:
    workers: int | None = None
    """Concurrent jobs; None means one per visible GPU (one on a machine without GPUs)."""
    gpus: list[str] | None = None
    """GPU ids to pin workers to (None: the visible GPUs)."""
    job_fn: str = "backend.demo:demo_job"
    """The job function, as 'module:function'."""
    watchdog_s: float = 600.0
    """Fail a running job that emits no event for this long."""
    cancel_grace_s: float = 10.0
    """Kill a job this long after a cancel if it has not stopped by itself."""
    poll_s: float = 0.05
    give_up_s: float = 120.0
    """The dispatcher declares the executor failed when its rounds keep failing this long."""
    store_timeout_s: float = 30.0
    """How long a worker waits for a locked job database before its job goes back to the queue."""
    extra: dict[str, Any] = field(default_factory=dict)


class LocalExecutor:
    """Runs jobs in local worker processes; see the module docstring."""

    def __init__(self, store: JobStore, data_dir: str | Path, cfg: ExecutorConfig | None = None) -> None:
        self.store = store
        self.data_dir = Path(data_dir)
        self.cfg = cfg or ExecutorConfig()
        self._running: dict[str, _Running] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mp = mp.get_context("spawn")
        self.gpus = self.cfg.gpus if self.cfg.gpus is not None else visible_gpus()
        self.workers = self.cfg.workers or max(1, len(self.gpus))
        self.failure: str | None = None
        """Why the dispatcher gave up (its rounds kept failing), or None while it works."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="mpod123-dispatcher", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        """False once the dispatcher has given up (or died): the service should exit and be restarted."""
        return self.failure is None and self._thread is not None and self._thread.is_alive()

    def stop(self, kill: bool = True) -> None:
        """Stop dispatching; ``kill`` also kills the workers and re-queues their jobs with the
        attempt given back (a clean shutdown is not the job's failure)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if kill:
            for job_id, run in list(self._running.items()):
                run.process.kill()
                run.process.join(timeout=5)
                try:
                    self.store.requeue(job_id, "re-queued: the backend was stopped", refund=True)
                except Exception:  # the store may be the reason we stop
                    log.exception("could not re-queue %s", job_id)

    def recover(self) -> list:
        """After a restart: local workers died with the backend, so every running job is re-queued (or failed)."""
        return self.store.recover()

    def worker_pids(self) -> dict[str, int]:
        running = dict(self._running)  # a snapshot: the dispatcher thread changes the dict
        return {job_id: run.process.pid for job_id, run in running.items() if run.process.pid}

    def _loop(self) -> None:
        failing_since: float | None = None
        while not self._stop.is_set():
            try:
                self.tick()
                failing_since = None
            except Exception as exc:  # one bad round (a locked database, EMFILE) must not end dispatching
                now = time.monotonic()
                if failing_since is None:
                    failing_since = now
                    log.exception("dispatcher round failed; retrying")
                if now - failing_since > self.cfg.give_up_s:
                    self.failure = f"the dispatcher kept failing for {self.cfg.give_up_s:.0f} s: {type(exc).__name__}: {exc}"
                    log.error(self.failure)
                    return
                self._stop.wait(min(1.0, 10 * self.cfg.poll_s))
                continue
            self._stop.wait(self.cfg.poll_s)

    def tick(self) -> None:
        """One round of reaping, watchdog, cancel enforcement and dispatch."""
        now = time.time()
        for job_id, run in list(self._running.items()):
            proc = run.process
            try:
                job = self.store.get(job_id)
            except UnknownJob:  # deleted (expired) as its worker was exiting
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.kill()
                    proc.join(timeout=5)
                del self._running[job_id]
                continue
            if not proc.is_alive():
                proc.join()
                if job.state not in TERMINAL:  # before forgetting the worker: a failed round retries this
                    self._worker_died(job_id, proc.exitcode, job.attempts)
                del self._running[job_id]
                continue
            if job.state in TERMINAL:
                continue
            if self.store.cancel_requested(job_id):
                run.cancel_seen = run.cancel_seen or now
                if now - run.cancel_seen > self.cfg.cancel_grace_s:
                    proc.kill()
                    proc.join(timeout=5)
                    del self._running[job_id]
                    reason = "killed after the cancel grace period"
                    self.store.finish(job_id, "cancelled", "cancelled", {"reason": reason}, reason)
                continue
            if now - max(job.updated, run.started) > self.cfg.watchdog_s:
                proc.kill()
                proc.join(timeout=5)
                del self._running[job_id]
                fail_job(self.store, job_id, "Watchdog", f"no progress for {self.cfg.watchdog_s:.0f} s; the watchdog stopped it")
        while len(self._running) < self.workers:
            job = self.store.claim_next()
            if job is None:
                break
            try:
                self._start_worker(job.job_id)
            except BaseException as exc:
                # claim_next already marked it running: without this it would stay running with no process
                self.store.requeue(job.job_id, f"the worker could not start ({type(exc).__name__}: {exc}); re-queued",
                                   refund=True)
                raise

    def _start_worker(self, job_id: str) -> None:
        gpu = self._free_gpu()
        self.store.set_workdir(job_id, str(work_folder(self.data_dir, job_id)))
        proc = self._mp.Process(
            target=run_job,
            args=(str(self.store.path), job_id, self.cfg.job_fn, str(self.data_dir), os.getpid(), gpu,
                  self.cfg.store_timeout_s),
            name=f"mpod123-job-{job_id}",
            daemon=True,
        )
        proc.start()
        self._running[job_id] = _Running(proc, time.time(), gpu=gpu)

    def _free_gpu(self) -> str | None:
        """A GPU no running job holds (round-robin when there are more workers than GPUs)."""
        if not self.gpus:
            return None
        busy = [r.gpu for r in self._running.values()]
        free = [g for g in self.gpus if g not in busy]
        return free[0] if free else self.gpus[len(self._running) % len(self.gpus)]

    def _worker_died(self, job_id: str, exitcode: int | None, attempts: int) -> None:
        if exitcode == STORE_LOCKED_STATUS:
            self.store.append_event(job_id, "log", {"text": "the job database stayed locked; re-queued"})
            self.store.requeue(job_id, "the job database stayed locked; re-queued", refund=True)
        elif attempts < self.store.max_attempts:
            self.store.append_event(job_id, "log", {"text": f"worker exited with code {exitcode}; re-queued"})
            self.store.set_state(job_id, "queued", f"worker exited with code {exitcode}; re-queued")
        else:
            fail_job(self.store, job_id, "WorkerDied", f"worker exited with code {exitcode} on attempt {attempts}; giving up")
