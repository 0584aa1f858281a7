"""A DEALER client for the backend, free of bpy and torch: scripts, batch mode and tests use it.

Requests are answered in order on the one socket, interleaved with events of
the jobs this client submitted or resumed. :meth:`Client.request` returns the
next reply and files every event it passes in ``pending_events``;
:meth:`Client.drain` returns events without blocking (Blender calls it from a
timer). The client remembers the last sequence number it has seen per job, so
:meth:`resume` after a reconnect continues without gaps or duplicates.

ZeroMQ reconnects by itself and queues sends while disconnected, and a wrong
CURVE server key makes the handshake fail silently; every wait therefore has
a timeout whose error says what to check.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from . import protocol
from .protocol import Message

DEFAULT_CHUNK = 2 << 20


class BackendError(RuntimeError):
    """The backend answered with an error; ``ename`` says which."""

    def __init__(self, ename: str, evalue: str, hint: str = "") -> None:
        super().__init__(f"{ename}: {evalue}" + (f" ({hint})" if hint else ""))
        self.ename, self.evalue, self.hint = ename, evalue, hint


def _raise_if_error(msg: Message) -> None:
    if msg.msg_type == "error":
        raise BackendError(msg.content["ename"], msg.content["evalue"], msg.content.get("hint", ""))


class BackendTimeout(TimeoutError):
    """No answer in time; the message lists the likely causes."""


class Client:
    def __init__(
        self,
        endpoint: str,
        session: str | None = None,
        timeout_s: float = 10.0,
        server_key: bytes | None = None,
        client_keys: tuple[bytes, bytes] | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        """``server_key`` and ``client_keys`` (public, secret) turn on CURVE."""
        self.endpoint = endpoint
        self.session = session or uuid.uuid4().hex
        self.timeout_s = timeout_s
        self.curve = server_key is not None
        self.sock = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        self.sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 10000)
        if server_key is not None:
            if client_keys is None:
                raise ValueError("CURVE needs the client's key pair as well as the server's public key")
            self.sock.curve_serverkey = server_key
            self.sock.curve_publickey, self.sock.curve_secretkey = client_keys
        self.sock.connect(endpoint)
        self.pending_events: list[Message] = []
        self.last_seq: dict[str, int] = {}

    def close(self) -> None:
        self.sock.close(0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- plumbing
    def send(self, msg_type: str, content: dict[str, Any] | None = None, buffers: list[bytes] | None = None,
             job_id: str | None = None) -> None:
        msg = Message(msg_type, content or {}, buffers or [], job_id=job_id, session=self.session)
        self.sock.send_multipart(protocol.encode(msg))

    def _timeout(self, what: str) -> BackendTimeout:
        causes = "the backend is not running or not reachable at " + self.endpoint
        if self.curve:
            causes += ", the server public key is wrong, or this client's key is not on the server's allow-list"
        return BackendTimeout(f"no answer to {what} within {self.timeout_s:.0f} s: {causes}")

    def _recv(self, timeout_s: float) -> Message | None:
        if not self.sock.poll(max(0, int(timeout_s * 1000))):
            return None
        msg = protocol.decode(self.sock.recv_multipart())
        if msg.msg_type == "event" and msg.job_id is not None and msg.seq is not None:
            if msg.seq <= self.last_seq.get(msg.job_id, 0):
                return self._recv(0)  # a duplicate after a resume: drop it
            self.last_seq[msg.job_id] = msg.seq
        return msg

    def request(self, msg_type: str, content: dict[str, Any] | None = None, buffers: list[bytes] | None = None,
                job_id: str | None = None) -> Message:
        """Send one request and return its reply; an ``error`` reply raises BackendError."""
        self.send(msg_type, content, buffers, job_id)
        deadline = time.monotonic() + self.timeout_s
        while True:
            msg = self._recv(deadline - time.monotonic())
            if msg is None:
                raise self._timeout(msg_type)
            if msg.msg_type == "event":
                self.pending_events.append(msg)
                continue
            _raise_if_error(msg)
            return msg

    def drain(self, max_messages: int = 100) -> list[Message]:
        """Events received so far, without blocking (at most ``max_messages`` read per call)."""
        for _ in range(max_messages):
            msg = self._recv(0)
            if msg is None:
                break
            if msg.msg_type == "event":
                self.pending_events.append(msg)
        events, self.pending_events = self.pending_events, []
        return events

    # ---------------------------------------------------------------- calls
    def hello(self) -> dict[str, Any]:
        return self.request("hello", {"client": "mpod123-client"}).content

    def submit(self, image: bytes, options: dict[str, Any] | None = None, job_id: str | None = None) -> str:
        """Queue a job (idempotent by ``job_id``); returns the job id once the backend has stored it."""
        job_id = job_id or uuid.uuid4().hex
        self.request("submit", {"options": options or {}}, [image], job_id=job_id)
        self.last_seq.setdefault(job_id, 0)
        return job_id

    def status(self, job_id: str) -> dict[str, Any]:
        return self.request("status", job_id=job_id).content

    def list_jobs(self) -> list[dict[str, Any]]:
        return self.request("list").content["jobs"]

    def cancel(self, job_id: str) -> str:
        return self.request("cancel", job_id=job_id).content["state"]

    def resume(self, job_id: str, last_seq: int | None = None) -> dict[str, Any]:
        """Ask again for a job's events after ``last_seq`` (default: the last one seen)."""
        seq = self.last_seq.get(job_id, 0) if last_seq is None else last_seq
        self.last_seq[job_id] = seq
        return self.request("resume", {"last_seq": seq}, job_id=job_id).content

    def wait(self, job_id: str, until: tuple[str, ...] = ("done", "failed", "cancelled"), timeout_s: float = 3600.0,
             on_event: Callable[[Message], None] | None = None) -> Message:
        """Block until an event of kind ``until`` for ``job_id``; returns it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for msg in self.drain():
                if on_event is not None:
                    on_event(msg)
                if msg.job_id == job_id and msg.content.get("kind") in until:
                    return msg
            self.sock.poll(200)
        raise BackendTimeout(f"job {job_id} did not finish within {timeout_s:.0f} s")

    def fetch(self, job_id: str, dest: str | Path, chunk: int = DEFAULT_CHUNK, in_flight: int = 4) -> Path:
        """Download the result to ``dest`` in chunks, resuming a partial ``dest.part``; checks sha256."""
        info = self.request("result_info", job_id=job_id).content
        size, digest = info["size"], info["sha256"]
        dest = Path(dest)
        part = dest.with_name(dest.name + ".part")
        offset = part.stat().st_size if part.exists() else 0
        if offset > size:
            part.unlink()
            offset = 0
        with open(part, "ab") as f:
            next_offset = offset
            outstanding = 0
            received: dict[int, bytes] = {}
            while offset < size:
                while outstanding < in_flight and next_offset < size:
                    self.send("fetch_chunk", {"offset": next_offset, "length": min(chunk, size - next_offset)}, job_id=job_id)
                    next_offset += min(chunk, size - next_offset)
                    outstanding += 1
                msg = self._recv(self.timeout_s)
                if msg is None:
                    raise self._timeout("fetch_chunk")
                if msg.msg_type == "event":
                    self.pending_events.append(msg)
                    continue
                _raise_if_error(msg)
                outstanding -= 1
                received[msg.content["offset"]] = msg.buffers[0]
                while offset in received:
                    data = received.pop(offset)
                    f.write(data)
                    offset += len(data)
        if protocol.file_digest(part)[0] != digest:
            part.unlink()
            raise BackendError("ChecksumMismatch", f"the download of {job_id} does not match its sha256", "fetch again")
        os.replace(part, dest)
        return dest
