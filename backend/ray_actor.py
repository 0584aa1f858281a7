"""The Ray executor's worker side: :class:`JobRunner`, the actor that runs one job on a Ray worker.

The actor runs the same job function as a local worker, in a thread, and keeps
the job's events in an in-memory list that the front door
(:mod:`backend.ray_executor`) reads through the streaming generator
:meth:`JobRunner.stream`. After every finished stage it adds a tar of its work
folder (the stage checkpoints); the stream's last item is the result, a
failure or a cancel. The private item kinds below are that stream's protocol:
everything else is a job event for the store and the clients.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from .workers import JobCancelled, JobContext, resolve_job_fn

# private stream items: everything else is a job event for the store and the clients
RESULT, FAILED, CANCELLED, CHECKPOINT = "_result", "_failed", "_cancelled", "_checkpoint"
FINAL = frozenset({RESULT, FAILED, CANCELLED})


def pack_folder(folder: Path) -> bytes:
    """A folder as an uncompressed tar (checkpoints are already dense)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return buf.getvalue()


def unpack_folder(data: bytes, folder: Path) -> None:
    """The inverse of :func:`pack_folder`; members that would land outside ``folder`` are refused."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(folder, filter="data")


@dataclass
class RayJobContext(JobContext):
    """The job function's view of its job on a Ray worker: the same calls as a local worker's,
    but events go to the actor's list instead of the store, and cancel comes from the actor."""

    runner: JobRunner | None = None

    def emit(self, kind: str, content: dict[str, Any], blob: bytes | None = None) -> int:
        assert self.runner is not None
        position = self.runner.post(kind, content, blob)
        if kind == "stage_done":
            self.runner.post_checkpoint(self.workdir, content.get("stage"))
        return position

    def check_cancel(self) -> None:
        assert self.runner is not None
        if self.runner.cancel_requested.is_set():
            raise JobCancelled("cancelled by the client")


STALE_WORKDIR_S = 24 * 3600.0


def _fresh_workdir(job_id: str) -> Path:
    """A work folder on this worker's disk. Folders that a killed actor could not remove (its
    job's earlier attempts, or anything untouched for a day) are removed here. ``job_id`` is the
    server's (fixed-length hex), so ``<id>-`` never prefixes another job's folder."""
    root = Path(tempfile.gettempdir()) / "mpod123-ray-jobs"
    root.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in root.iterdir():
        try:
            if old.name.rpartition("-")[0] == job_id or now - old.stat().st_mtime > STALE_WORKDIR_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass  # another actor removed it first
    return Path(tempfile.mkdtemp(prefix=f"{job_id}-", dir=root))


class JobRunner:
    """One job on a Ray worker (wrapped by ``ray.remote`` as a threaded, detached actor).

    The job runs in a thread started by the constructor. Its events are kept in
    order in ``self._events``; :meth:`stream` hands them out from any position,
    so a reattaching front door can continue where it stopped reading.
    """

    def __init__(
        self, job_id: str, image: bytes, options: dict[str, Any], job_fn: str,
        checkpoint: bytes | None = None, checkpoint_max_mb: float = 1024.0, linger_s: float = 3600.0,
        client_id: str = "",
    ) -> None:
        self.job_id = job_id
        self.cancel_requested = threading.Event()
        self._events: list[tuple[str, dict[str, Any], bytes | None]] = []
        self._cond = threading.Condition()
        self._finished = False
        self._closed_streams: set[str] = set()
        self._last_checkpoint: int | None = None
        self._checkpoint_max = int(checkpoint_max_mb * 2**20)
        self._linger_s = linger_s
        self.workdir = _fresh_workdir(job_id)
        if checkpoint:
            unpack_folder(checkpoint, self.workdir)
        ctx = RayJobContext(job_id, image, options, self.workdir, None, client_id, runner=self)  # type: ignore[arg-type]
        self._thread = threading.Thread(target=self._run, args=(ctx, job_fn), name=f"job-{job_id}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ the job
    def _run(self, ctx: RayJobContext, job_fn: str) -> None:
        final: tuple[str, dict[str, Any], bytes | None]
        try:
            result = Path(resolve_job_fn(job_fn)(ctx))
            final = (RESULT, {"suffix": result.suffix}, result.read_bytes())
        except JobCancelled as exc:
            final = (CANCELLED, {"reason": str(exc)}, None)
        except BaseException as exc:  # the job's failure, reported to the client
            self.post("log", {"text": traceback.format_exc()[-4000:]})
            final = (FAILED, {"ename": type(exc).__name__, "evalue": str(exc)}, None)
        # the work folder goes before the final item: the front door kills the actor once it has it
        shutil.rmtree(self.workdir, ignore_errors=True)
        with self._cond:
            self._events.append(final)
            self._finished = True
            self._cond.notify_all()
        time.sleep(self._linger_s)  # nobody collected the result: free the worker
        os._exit(0)

    def post(self, kind: str, content: dict[str, Any], blob: bytes | None = None) -> int:
        with self._cond:
            self._events.append((kind, content, blob))
            self._cond.notify_all()
            return len(self._events) - 1

    def post_checkpoint(self, workdir: Path, stage: str | None) -> None:
        """Send the work folder after a finished stage; only the newest one is kept in memory."""
        data = pack_folder(workdir)
        if len(data) > self._checkpoint_max:
            self.post("log", {"text": f"stage {stage} checkpoint is {len(data) / 2**20:.0f} MB, over the limit; not sent"})
            return
        with self._cond:
            if self._last_checkpoint is not None:  # superseded: free its bytes
                kind, content, _ = self._events[self._last_checkpoint]
                self._events[self._last_checkpoint] = (kind, content, None)
            self._last_checkpoint = self.post(CHECKPOINT, {"stage": stage, "size": len(data)}, data)

    # ---------------------------------------------------- actor methods
    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "node": ray.get_runtime_context().get_node_id()}

    def stream(self, start: int, token: str):
        """Yield (position, kind, content, blob) from ``start`` on, as they come, until the job's final item.

        A ``ray.cancel`` of this stream is the cooperative cancel of the job.
        """
        position = start
        try:
            while True:
                with self._cond:
                    while len(self._events) <= position and not self._finished and token not in self._closed_streams:
                        self._cond.wait(0.1)
                        if ray.get_runtime_context().is_canceled():
                            return  # the finally below passes the cancel on to the job
                    batch = self._events[position:]
                    done = self._finished
                if token in self._closed_streams:
                    return
                for kind, content, blob in batch:
                    yield position, kind, content, blob
                    position += 1
                if done and position >= len(self._events):
                    return
        finally:
            if ray.get_runtime_context().is_canceled():
                self.cancel_requested.set()

    def close_stream(self, token: str) -> None:
        """End one stream without touching the job (its front door is going away)."""
        with self._cond:
            self._closed_streams.add(token)
            self._cond.notify_all()

    def request_cancel(self) -> None:
        self.cancel_requested.set()

    def wait_stopped(self, timeout_s: float) -> bool:
        """True once the job's thread has posted its final item (within ``timeout_s``)."""
        with self._cond:
            self._cond.wait_for(lambda: self._finished, timeout_s)
            return self._finished
