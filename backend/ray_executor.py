"""The Ray executor: jobs run on a Ray cluster, the ZeroMQ front door stays the source of truth.

Why this shape
--------------
Each job is one *detached, threaded Ray actor* (:class:`~backend.ray_actor.JobRunner`, in
:mod:`backend.ray_actor`) named
``mpod123-<job id>-<attempt>``. The actor runs the same job function as a
local worker, in a thread, and keeps the job's events in an in-memory list.
The front door reads that list through a *streaming generator* method
(``JobRunner.stream(start)``): events arrive in order, as they are made, with
no polling of files and no shared file system.

The front door (:class:`RayExecutor`) owns everything durable:

* every event goes into the SQLite store, which gives it its sequence number;
  the position read in the actor's list is stored *in the same transaction*
  (the store's ``cursors`` table), so a front door that restarts resumes
  reading exactly after the last stored event: nothing lost, nothing twice;
* the result comes back through Ray's object store as the stream's last item
  and is written to the front door's results folder, so chunked download,
  sha256 and CURVE work exactly as with the local executor;
* after every finished stage the actor sends a tar of its work folder (the
  stage checkpoints); the front door keeps the newest. A job whose worker or
  node dies is re-queued (up to the store's ``max_attempts``) and its next
  actor starts from that checkpoint, so it resumes rather than restarts;
* actors are *detached*, so a front door that restarts (``serve`` stopped, or
  killed) finds its running jobs still running on the cluster and reattaches
  to them; jobs whose actor is gone are re-queued. An embedded Ray dies with
  the front door, so there every interrupted job is re-queued.

Cancel is ``ray.cancel`` on the job's stream (cooperative: the actor sees the
cancellation and the job stops at its next step), then ``ray.kill`` of the
actor after ``cancel_grace_s`` (forced).

Ray's own port must stay on a trusted network (docs/cluster.md): clients only
ever talk to the CURVE-protected ZeroMQ front door.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, TaskCancelledError

from .store import TERMINAL, Job, JobStore
from .ray_actor import CANCELLED, CHECKPOINT, FAILED, FINAL, RESULT, JobRunner
from .workers import ExecutorConfig, database_locked, fail_job, publish_result

NAMESPACE = "mpod123"


@dataclass
class RayConfig:
    """How jobs are placed on the cluster."""

    address: str | None = None
    """A running cluster to join (``ray start --head`` prints it); None starts an embedded local Ray."""
    num_gpus: float = 1.0
    """GPUs each job needs (0 for the tiny mode, which runs on the CPU)."""
    num_cpus: float = 1.0
    """CPUs each job needs."""
    namespace: str = NAMESPACE
    """Ray namespace of the job actors; two front doors on one cluster need two namespaces."""
    checkpoint_max_mb: float = 1024.0
    """Largest stage checkpoint sent back to the front door (bigger ones are not kept: a re-queued job restarts)."""
    linger_s: float = 3600.0
    """A finished actor whose front door never collects it exits after this long."""
    env_prefixes: tuple[str, ...] = ("MPOD123_", "HF_")
    """Environment variables of the front door passed to the job actors (model locations, offline mode)."""
    extra_init: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for ``ray.init`` of an embedded Ray (e.g. ``num_cpus``)."""


# ----------------------------------------------------------- front-door side
def _kill_actor(actor: Any) -> None:
    """Forced stop of a job's actor; one that is already gone is fine."""
    try:
        ray.kill(actor, no_restart=True)
    except (ValueError, RayActorError):
        pass


@dataclass
class _RayRun:
    job_id: str
    name: str
    actor: Any
    position: int
    started: float
    thread: threading.Thread | None = None
    stream: Any = None
    token: str = ""
    pid: int | None = None
    cancel_sent: float | None = None
    kill_reason: tuple[str, str] | None = None
    """Set before the front door kills the actor itself: (state, reason) to finish the job with."""


class RayExecutor:
    """Runs jobs as Ray actors; see the module docstring. Same interface as :class:`LocalExecutor`."""

    def __init__(
        self, store: JobStore, data_dir: str | Path, cfg: ExecutorConfig | None = None,
        ray_cfg: RayConfig | None = None, address: str | None = None,
    ) -> None:
        self.store = store
        self.data_dir = Path(data_dir)
        self.cfg = cfg or ExecutorConfig()
        self.ray_cfg = ray_cfg or RayConfig()
        if address is not None:
            self.ray_cfg.address = address
        self._runs: dict[str, _RayRun] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._capacity = (0, 0.0)  # (jobs, when it was computed)
        self.owns_ray = not ray.is_initialized()
        if self.owns_ray:
            init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True} | self.ray_cfg.extra_init
            ray.init(address=self.ray_cfg.address or "local", namespace=self.ray_cfg.namespace, **init)
        self._remote = ray.remote(JobRunner)

    # ----------------------------------------------------- the interface
    @property
    def workers(self) -> int:
        return self._jobs_that_fit(force=True)

    @property
    def gpus(self) -> list[str]:
        return [str(i) for i in range(int(ray.cluster_resources().get("GPU", 0)))]

    def recover(self) -> list[Job]:
        """After a restart: reattach to jobs whose actor still runs on the cluster, re-queue the rest."""
        kept = set()
        for job in self.store.list(states=("running",)):
            cursor = self.store.cursor(job.job_id)
            actor = self._live_actor(cursor[0]) if cursor else None
            if actor is None:
                continue
            self.store.append_event(job.job_id, "log", {"text": "the backend restarted and reattached to the running job"})
            self._follow(_RayRun(job.job_id, cursor[0], actor, cursor[1], time.time()))
            kept.add(job.job_id)
        return self.store.recover(keep=frozenset(kept))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="mpod123-ray-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, kill: bool | None = None) -> None:
        """Stop dispatching and reading. ``kill`` (default: only for an embedded Ray, which dies
        anyway) also kills the running jobs' actors; otherwise they keep running for the next
        front door to reattach to."""
        kill = self.owns_ray if kill is None else kill
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            if kill:
                _kill_actor(run.actor)
            else:
                run.actor.close_stream.remote(run.token)
        for run in runs:
            if run.thread is not None:
                run.thread.join(timeout=10)
            if kill:  # a clean stop is not the job's failure: it runs again, attempt given back
                try:
                    self.store.requeue(run.job_id, "re-queued: the backend was stopped", refund=True)
                except Exception:
                    traceback.print_exc()
        if self.owns_ray:
            ray.shutdown()

    def alive(self) -> bool:
        """False once the dispatcher thread has stopped (it retries every failed round)."""
        return self._thread is not None and self._thread.is_alive()

    def worker_pids(self) -> dict[str, int]:
        with self._lock:
            return {job_id: run.pid for job_id, run in self._runs.items() if run.pid}

    # ------------------------------------------------------- dispatching
    def _loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.tick()
                failing = False
            except Exception:  # a hiccup talking to the cluster must not stop the dispatcher
                if not failing:  # once per streak of failures, not once per round
                    traceback.print_exc()
                failing = True
            self._stop.wait(self.cfg.poll_s)

    def tick(self) -> None:
        """Cancel and watchdog for running jobs, then start queued ones while the cluster has room."""
        now = time.time()
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            job = self.store.get(run.job_id)
            if job.state in TERMINAL or run.kill_reason is not None:
                continue
            if self.store.cancel_requested(run.job_id):
                if run.cancel_sent is None and run.stream is not None:
                    run.cancel_sent = now
                    ray.cancel(run.stream)  # cooperative; the reading thread enforces the grace period
                continue
            if now - max(job.updated, run.started) > self.cfg.watchdog_s:
                self._kill(run, "failed", f"no progress for {self.cfg.watchdog_s:.0f} s; the watchdog stopped it")
        while len(self._runs) < self._jobs_that_fit():
            job = self.store.claim_next()
            if job is None:
                break
            try:
                self._dispatch(job)
            except BaseException as exc:  # claim_next marked it running: never strand it
                self.store.requeue(job.job_id, f"could not start on Ray ({type(exc).__name__}: {exc}); re-queued",
                                   refund=True)
                raise

    def _jobs_that_fit(self, force: bool = False) -> int:
        """Concurrent jobs: ``workers`` if set, else what the cluster's GPUs (or CPUs) hold, rechecked
        every few seconds so that nodes joining the cluster add capacity."""
        if self.cfg.workers:
            return self.cfg.workers
        jobs, when = self._capacity
        if force or time.time() - when > 2.0:
            total = ray.cluster_resources()
            fits = [int(total.get(kind, 0) // need) for kind, need in (("GPU", self.ray_cfg.num_gpus), ("CPU", self.ray_cfg.num_cpus)) if need > 0]
            jobs = min(fits) if fits else 1
            self._capacity = (jobs, time.time())
        return jobs

    def _dispatch(self, job: Job) -> None:
        name = f"mpod123-{job.job_id}-{job.attempts}"
        checkpoint_file = self._checkpoint_path(job.job_id)
        checkpoint = checkpoint_file.read_bytes() if checkpoint_file.exists() else None
        env = {k: v for k, v in os.environ.items() if k.startswith(self.ray_cfg.env_prefixes)}
        actor = self._remote.options(
            name=name, namespace=self.ray_cfg.namespace, lifetime="detached", max_restarts=0, max_concurrency=8,
            num_gpus=self.ray_cfg.num_gpus, num_cpus=self.ray_cfg.num_cpus, runtime_env={"env_vars": env} if env else None,
        ).remote(
            job.job_id, self.store.image(job.job_id), job.options, self.cfg.job_fn, checkpoint,
            self.ray_cfg.checkpoint_max_mb, self.ray_cfg.linger_s, job.client_id,
        )
        self.store.set_workdir(job.job_id, str(self._checkpoint_path(job.job_id).parent))
        self.store.set_cursor(job.job_id, name, 0)
        self._follow(_RayRun(job.job_id, name, actor, 0, time.time()))

    def _follow(self, run: _RayRun) -> None:
        with self._lock:
            self._runs[run.job_id] = run
        run.thread = threading.Thread(target=self._read, args=(run,), name=f"mpod123-ray-{run.job_id}", daemon=True)
        run.thread.start()

    def _kill(self, run: _RayRun, state: str, reason: str) -> None:
        """Forced stop by the front door; the reading thread finishes the job with ``reason``."""
        run.kill_reason = (state, reason)
        _kill_actor(run.actor)

    def _live_actor(self, name: str) -> Any | None:
        try:
            actor = ray.get_actor(name, namespace=self.ray_cfg.namespace)
            ray.get(actor.info.remote(), timeout=30)
            return actor
        except (ValueError, RayActorError, ActorUnavailableError, GetTimeoutError):
            return None

    def _checkpoint_path(self, job_id: str) -> Path:
        return self.data_dir / "jobs" / job_id / "checkpoint.tar"

    # --------------------------------------------------------- reading
    def _read(self, run: _RayRun) -> None:
        """Follow one job's stream into the store until it ends; then decide what the end means."""
        try:
            outcome = self._read_stream(run)
            if self._stop.is_set():
                return  # the front door is going away; the next one reattaches or re-queues
            if outcome == "cancel-sent":
                # the stream was cancelled: give the job the grace period to stop by itself, then
                # read its last items (normally its "_cancelled", or its result if it was faster)
                try:
                    grace = self.cfg.cancel_grace_s
                    stopped = ray.get(run.actor.wait_stopped.remote(grace), timeout=grace + 30)
                except (RayActorError, GetTimeoutError):
                    stopped = False
                if stopped:
                    outcome = self._read_stream(run)
                else:
                    self._kill(run, "cancelled", "killed after the cancel grace period")
                    outcome = "died"
            if outcome == "died" and not self._stop.is_set():
                self._ended_without_result(run)
        except Exception as exc:  # e.g. the store refused a write: never leave the job hanging
            if not self._stop.is_set():
                traceback.print_exc()
                self._ended_without_result(run, f"{type(exc).__name__}: {exc}")
        finally:
            if not self._stop.is_set():
                with self._lock:
                    self._runs.pop(run.job_id, None)

    def _read_stream(self, run: _RayRun) -> str:
        """Read items into the store; returns 'final', 'stopped', 'cancel-sent' or 'died'."""
        retries = 0
        while True:
            try:
                if run.pid is None:
                    run.pid = ray.get(run.actor.info.remote())["pid"]
                run.token = uuid.uuid4().hex
                run.stream = run.actor.stream.options(num_returns="streaming").remote(run.position, run.token)
                while True:
                    if self._stop.is_set():
                        return "stopped"
                    ready, _ = ray.wait([run.stream], timeout=0.2)
                    if not ready:
                        continue
                    try:
                        ref = next(run.stream)
                    except StopIteration:
                        return "died"  # the stream ended without a final item: the actor is going away
                    position, kind, content, blob = ray.get(ref)
                    if self._stop.is_set():
                        return "stopped"
                    if self._ingest_waiting(run, position, kind, content, blob):
                        return "final"
            except TaskCancelledError:
                return "cancel-sent" if run.cancel_sent is not None else "died"
            except ActorUnavailableError:  # a node briefly unreachable: try again a few times
                retries += 1
                if retries > 10:
                    return "died"
                time.sleep(1.0)
            except RayActorError:
                return "died"

    def _ingest_waiting(self, run: _RayRun, *item: Any) -> bool:
        """:meth:`_ingest`, waiting out a job database locked past its busy timeout: the actor keeps the
        item, and the cursor moves only with a stored write, so storing it again once the lock clears
        loses and repeats nothing (a local worker, which holds its events alone, re-queues instead)."""
        told = False
        while True:
            try:
                return self._ingest(run, *item)
            except sqlite3.OperationalError as exc:
                if not database_locked(exc) or self._stop.is_set():
                    raise
                if not told:
                    print(f"mpod123 ray executor: the job database is locked ({exc}); job {run.job_id} waits",
                          file=sys.stderr, flush=True)
                    told = True
                self._stop.wait(0.25)

    def _ingest(self, run: _RayRun, position: int, kind: str, content: dict[str, Any], blob: bytes | None) -> bool:
        """Store one item; True for the job's final item."""
        cursor = (run.name, position + 1)
        job_id = run.job_id
        if kind == CHECKPOINT:
            if blob is not None:  # None: a newer checkpoint superseded it before we read it
                target = self._checkpoint_path(job_id)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.with_name("checkpoint.tmp").write_bytes(blob)
                os.replace(target.with_name("checkpoint.tmp"), target)
            self.store.set_cursor(job_id, *cursor)
        elif kind == RESULT:
            publish_result(self.store, self.data_dir, job_id, content["suffix"], lambda tmp: tmp.write_bytes(blob or b""), cursor)
        elif kind == CANCELLED:
            self.store.finish(job_id, "cancelled", "cancelled", {"reason": content["reason"]}, content["reason"], cursor=cursor)
        elif kind == FAILED:
            fail_job(self.store, job_id, content["ename"], content["evalue"], cursor=cursor)
        else:
            self.store.append_event(job_id, kind, content, blob, cursor=cursor)
        run.position = position + 1
        if kind in FINAL:
            self._checkpoint_path(job_id).unlink(missing_ok=True)
            _kill_actor(run.actor)
            return True
        return False

    def _ended_without_result(self, run: _RayRun, error: str | None = None) -> None:
        """The actor is gone before its final item: finish as the front door decided, or re-queue."""
        job = self.store.get(run.job_id)
        if job.state in TERMINAL:
            return
        if run.kill_reason is not None:
            state, reason = run.kill_reason
            if state == "cancelled":
                self.store.finish(run.job_id, "cancelled", "cancelled", {"reason": reason}, reason)
            else:
                fail_job(self.store, run.job_id, "Watchdog", reason)
            return
        why = error or "its Ray worker or node died"
        if job.attempts < self.store.max_attempts:
            resumes = "from its last stage checkpoint" if self._checkpoint_path(run.job_id).exists() else "from the start"
            self.store.append_event(run.job_id, "log", {"text": f"{why}; re-queued, it resumes {resumes}"})
            self.store.set_state(run.job_id, "queued", f"{why}; re-queued")
        else:
            fail_job(self.store, run.job_id, "WorkerDied", f"{why} on attempt {job.attempts}; giving up")
        _kill_actor(run.actor)  # never two runners of one job: a half-alive one is stopped for good
