"""The connection's own thread: a host whose main thread must never wait (Blender) queues calls here and
takes their outcomes and the jobs' events, both without waiting. The ZeroMQ sockets never leave this thread."""

from __future__ import annotations

import collections
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from .client import AddonClient, BackendError, BackendTimeout
from .vendor.protocol import Message

MIN_UPLOAD_BYTES_PER_S = 128 * 1024
"""A submit's deadline grows with the image: ``timeout_s`` plus the time to send it at this rate, so a large
photo over a slow link is not declared lost while it is still uploading."""


def upload_timeout(timeout_s: float, nbytes: int) -> float:
    """How long a submit of ``nbytes`` may take before it counts as unanswered."""
    return float(timeout_s) + nbytes / MIN_UPLOAD_BYTES_PER_S


@dataclass
class Outcome:
    """One thing the network thread hands to the host's main thread.

    ``kind`` is "reply" (``value`` is the call's result), "error" (``error`` says why, ``timeout`` tells a
    missing answer from a refusal), "events" (``value`` is a list of :class:`Message`) or "notice"
    (``value`` is a sentence about the connection). ``op`` and ``tag`` are what the caller passed.
    """

    kind: str
    op: str = ""
    tag: Any = None
    value: Any = None
    error: str = ""
    timeout: bool = False


class NetworkThread:
    """Owns one :class:`AddonClient` on a thread of its own, so that no request ever waits on the host's thread.

    The host queues calls with :meth:`call` (returns at once) and collects their outcomes and the jobs'
    events with :meth:`take` (never waits). The ZeroMQ sockets are created, used and closed on this thread
    only. Calls run one after another in the order queued, so a "hello" queued before a "submit" is
    answered first. Between calls the thread drains events every ``poll_s``.
    """

    def __init__(self, endpoint: str, session: str, timeout_s: float = 10.0, server_key: bytes | None = None,
                 client_keys: tuple[bytes, bytes] | None = None, poll_s: float = 0.02,
                 preview_dir: str | Path | None = None) -> None:
        """``preview_dir``: where this thread writes each preview's PNG (``<job>-<stage>.png``, replaced
        atomically) and notes its path as the event's ``preview_path``, so the host never writes files."""
        self.endpoint, self.session, self.timeout_s = endpoint, session, float(timeout_s)
        self.preview_dir = Path(preview_dir) if preview_dir is not None else None
        self._keys = (server_key, client_keys)
        self.poll_s = poll_s
        self.state = "connecting"
        self.message = ""
        self.server_info: dict[str, Any] = {}
        self.busy: dict[str, str] = {}
        """job id -> what the thread is doing for it now ("uploading", "downloading"), for the host to show."""
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._outbox: collections.deque[Outcome] = collections.deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"mpod123-network {endpoint}", daemon=True)
        self._thread.start()

    # -------------------------------------------------------- host's side
    def call(self, op: str, *args: Any, tag: Any = None, **kw: Any) -> None:
        """Queue ``AddonClient.<op>(*args, **kw)`` (or one of this class's ops); the outcome comes from :meth:`take`."""
        self._inbox.put((op, args, kw, tag))

    def take(self, max_items: int = 1000) -> list[Outcome]:
        """Outcomes so far, oldest first, without waiting."""
        out = []
        while self._outbox and len(out) < max_items:
            out.append(self._outbox.popleft())
        return out

    def has_outcomes(self) -> bool:
        return bool(self._outbox)

    def stop(self, timeout_s: float = 2.0) -> None:
        """Ask the thread to close its sockets and end; waits at most ``timeout_s`` (it is a daemon thread)."""
        self._stop.set()
        self._inbox.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------ thread's side
    def _main(self) -> None:
        try:
            client = AddonClient(self.endpoint, self.session, self.timeout_s, *self._keys)
        except Exception as exc:  # noqa: BLE001  a bad address or key: say so, then wait to be stopped
            self.state, self.message = "closed", f"cannot open a connection to {self.endpoint}: {exc}"
            self._outbox.append(Outcome("error", "open", error=self.message))
            self._stop.wait()
            return
        try:
            while not self._stop.is_set():
                try:
                    item = self._inbox.get(timeout=self.poll_s)
                except queue.Empty:
                    item = None
                if item is not None:
                    self._run(client, *item)
                self._drain(client)
        finally:
            client.close()
            self.state = "closed"

    def _drain(self, client: AddonClient) -> None:
        try:
            events = client.drain(500)
        except zmq.ZMQError as exc:
            self._outbox.append(Outcome("notice", value=f"socket error: {exc}"))
            return
        for note in client.take_notices():
            self._outbox.append(Outcome("notice", value=note))
        if events:
            if self.preview_dir is not None:
                for msg in events:
                    self._write_preview(msg)
            self._outbox.append(Outcome("events", value=events))
        self.state, self.message = client.state, client.message

    def _run(self, client: AddonClient, op: str, args: tuple, kw: dict, tag: Any) -> None:
        try:
            if op == "hello_until":
                value = self._hello_until(client, *args, **kw)
            elif op == "submit":
                value = self._submit(client, *args, **kw)
            elif op == "fetch":
                value = self._fetch(client, *args, **kw)
            else:
                value = getattr(client, op)(*args, **kw)
            outcome = Outcome("reply", op, tag, value)
        except BackendTimeout as exc:
            outcome = Outcome("error", op, tag, error=str(exc), timeout=True)
        except BackendError as exc:
            outcome = Outcome("error", op, tag, error=str(exc))
        except (OSError, ValueError, KeyError, TypeError, zmq.ZMQError) as exc:
            outcome = Outcome("error", op, tag, error=f"{type(exc).__name__}: {exc}")
        self.state, self.message, self.server_info = client.state, client.message, client.server_info
        # events the call passed on its way come before its outcome, as they happened
        self._drain(client)
        self._outbox.append(outcome)

    def _write_preview(self, msg: Message) -> None:
        content = msg.content
        if content.get("kind") != "preview" or not msg.buffers or not msg.job_id:
            return
        stage = "".join(ch for ch in str(content.get("stage", "")) if ch.isalnum())[:32]
        job = "".join(ch for ch in msg.job_id if ch.isalnum() or ch in "-_")[:64]
        if not stage or not job:
            return
        path = self.preview_dir / f"{job}-{stage}.png"
        tmp = path.with_name(path.name + ".tmp")
        try:
            self.preview_dir.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(msg.buffers[0])
            os.replace(tmp, path)
            content["preview_path"] = str(path)
        except OSError as exc:
            self._outbox.append(Outcome("notice", value=f"cannot write a preview: {exc}"))

    def _submit(self, client: AddonClient, image: bytes, options: dict[str, Any], job_id: str,
                views: list[bytes] | tuple = (), extra: list[bytes] | None = None) -> str:
        nbytes = len(image) + sum(map(len, views)) + sum(len(b) for b in extra or ())
        self.busy[job_id] = f"uploading {nbytes / 1e6:.1f} MB"
        saved = client.client.timeout_s
        client.client.timeout_s = upload_timeout(saved, nbytes)
        try:
            return client.submit(image, options, job_id, views, extra)
        finally:
            client.client.timeout_s = saved
            self.busy.pop(job_id, None)

    def _fetch(self, client: AddonClient, job_id: str, dest: str) -> str:
        self.busy[job_id] = "downloading"
        try:
            return str(client.fetch(job_id, dest))
        finally:
            self.busy.pop(job_id, None)

    def _hello_until(self, client: AddonClient, limit_s: float, process=None) -> dict[str, Any]:
        """Hello, retried every second until ``limit_s`` (a local backend that is still starting)."""
        deadline = time.monotonic() + limit_s
        saved = client.client.timeout_s
        client.client.timeout_s = 1.0
        try:
            while True:
                if process is not None and process.poll() is not None:
                    raise BackendError("LocalBackendExited", f"the local backend exited with code {process.returncode}")
                try:
                    return client.hello()
                except BackendTimeout:
                    if time.monotonic() > deadline or self._stop.is_set():
                        raise BackendTimeout(f"the local backend did not answer within {limit_s:.0f} s") from None
        finally:
            client.client.timeout_s = saved
