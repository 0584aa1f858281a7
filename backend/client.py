"""A DEALER client for the backend, free of bpy and torch: scripts, batch mode and tests use it.

Requests are answered in order on the one socket, interleaved with events of
the jobs this client submitted or resumed. :meth:`Client.request` returns the
next reply and files every event it passes in ``pending_events``;
:meth:`Client.drain` returns events without blocking (Blender calls it from a
timer). The client remembers the last sequence number it has seen per job, so
:meth:`resume` after a reconnect continues without gaps or duplicates.

Every reply names the request it answers (``parent_msg_id``); a reply to an
earlier request that timed out is dropped, never taken for the current one.
Every message from the server carries its boot id: when it changes (the
server restarted), the client subscribes again to every job it follows, and
:meth:`wait` also asks for the job's status now and then, so a restart never
leaves it waiting for events that nobody will send.

On loopback the connection is CURVE too, with keys the local server made on
its first start in :func:`runtime_dir` (0700, files 0600, only that user can
read them: Jupyter's connection-file model with keys in place of the HMAC).
The client reads them by itself (:func:`read_local_keys`), so every process
of that user shares its jobs with no ``--session``, and no secret ever travels
on the wire: a squatter on the port has neither the server's secret nor
anything to steal. A runtime folder or key file that is a symbolic link, not
this user's own, or readable by others is refused (``O_NOFOLLOW``, checked on
the open file).

Liveness is the protocol's own ``ping``/``pong`` (ZMTP heartbeats are off:
libzmq aborts under them when a peer stops reading). :meth:`drain` and
:meth:`wait` ping when nothing was sent for ``PING_EVERY_S``; a ``pong`` that
says the server follows fewer jobs than this client does (it dropped a client
that fell behind) makes the client subscribe again, and a server silent for
``PEER_TIMEOUT_S`` while pinged gets a fresh socket.

ZeroMQ reconnects by itself and queues sends while disconnected, and a wrong
CURVE server key makes the handshake fail silently; every wait therefore has
a timeout whose error says what to check.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import zmq

from . import protocol
from .protocol import LocalKeysError, Message, read_local_keys, runtime_dir  # noqa: F401  (part of this API)
from .transfer import DEFAULT_CHUNK, BackendError, BackendTimeout, ResultDownload, _raise_if_error  # noqa: F401  (part of this API)

STATUS_EVERY_S = 2.0
"""How often :meth:`Client.wait` asks for the job's status besides listening for its events."""


class Client(ResultDownload):
    def __init__(
        self,
        endpoint: str,
        session: str | None = None,
        timeout_s: float = 10.0,
        server_key: bytes | None = None,
        client_keys: tuple[bytes, bytes] | None = None,
        context: zmq.Context | None = None,
        local_keys: bool = True,
    ) -> None:
        """``server_key`` and ``client_keys`` (public, secret) turn on CURVE. Without them, on a
        loopback endpoint, this user's local keys (:func:`read_local_keys`) do, when a local
        backend has made them (``local_keys=False``: never; a plain socket, for in-process tests)."""
        if server_key is not None and client_keys is None:
            raise ValueError("CURVE needs the client's key pair as well as the server's public key")
        self.endpoint = endpoint
        self.session = session or uuid.uuid4().hex
        self.timeout_s = timeout_s
        self.local = False
        if server_key is None and local_keys and protocol.is_loopback(endpoint):
            found = read_local_keys()
            if found is not None:
                server_key, client_keys = found
                self.local = True
        self.curve = server_key is not None
        self._ctx = context or zmq.Context.instance()
        self._server_key, self._client_keys = server_key, client_keys
        now = time.monotonic()
        self._last_sent = self._last_heard = now
        self._pinged = False
        """A ping is out and nothing was heard since."""
        self._next_resubscribe = 0.0
        self._finished: set[str] = set()
        """Jobs whose terminal event this client has seen (the server follows them no more)."""
        self.sock = self._socket()
        self.pending_events: list[Message] = []
        self.last_seq: dict[str, int] = {}
        self.server_boot: str | None = None
        self.max_image_bytes: int | None = None
        self._said_hello = False
        self.bad_messages = 0
        """Messages from the server that did not decode (dropped)."""
        self._acks: list[str] = []
        """Nonces of result chunks read and not yet acknowledged: the server's chunk credit."""

    def _socket(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)  # no ZMTP heartbeats: see the module docstring
        # a send blocks while no connection can take it (a CURVE handshake the server refused drops
        # the pipe): bound it, so a refused key is a clear timeout and never a hang
        sock.setsockopt(zmq.SNDTIMEO, max(1, int(self.timeout_s * 1000)))
        if self._server_key is not None:
            sock.curve_serverkey = self._server_key
            sock.curve_publickey, sock.curve_secretkey = self._client_keys
        sock.connect(self.endpoint)
        return sock

    def reconnect(self) -> None:
        """A fresh socket (after a timeout: nothing queued on the old one is sent or read), keeping
        the session and the sequence numbers; every followed job is subscribed again."""
        self.sock.close(0)
        self.sock = self._socket()
        self._acks = []  # a new connection starts with a full credit
        self._resubscribe()

    def close(self) -> None:
        self.sock.close(0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- plumbing
    def send(self, msg_type: str, content: dict[str, Any] | None = None, buffers: list[bytes] | None = None,
             job_id: str | None = None) -> None:
        self._send(Message(msg_type, content or {}, buffers or [], job_id=job_id, session=self.session))

    def _send(self, msg: Message, block: bool = True) -> str | None:
        """Send ``msg``; ``block=False`` (pings, resubscribes) gives up at once instead of waiting
        for a connection, and returns None when it could not send."""
        try:
            self.sock.send_multipart(protocol.encode(msg), 0 if block else zmq.NOBLOCK)
        except zmq.Again:
            if not block:
                return None
            raise self._timeout(msg.msg_type) from None
        self._last_sent = time.monotonic()
        return msg.msg_id

    def _timeout(self, what: str) -> BackendTimeout:
        causes = "the backend is not running or not reachable at " + self.endpoint
        if self.local:
            causes += f", or it was started by another user (this user's keys are in {runtime_dir()})"
        elif self.curve:
            causes += ", the server public key is wrong, or this client's key is not on the server's allow-list"
        return BackendTimeout(f"no answer to {what} within {self.timeout_s:.0f} s: {causes}")

    def _recv(self, timeout_s: float) -> Message | None:
        """The next event or reply; duplicates of events already seen are dropped (in a loop:
        a flood of them costs time, never the stack)."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        while self.sock.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            try:
                msg = protocol.decode(self.sock.recv_multipart())
            except protocol.ProtocolError as exc:  # dropped and counted; said once, without a traceback
                self.bad_messages += 1
                if self.bad_messages == 1:
                    print(f"mpod123 client: dropped a message that does not decode ({exc})", file=sys.stderr)
                continue
            self._last_heard, self._pinged = time.monotonic(), False
            self._check_boot(msg)
            if msg.msg_type == "pong":
                self._check_following(msg.content.get("following"))
                continue
            if msg.msg_type == "event" and msg.job_id is not None and msg.seq is not None:
                if msg.seq <= self.last_seq.get(msg.job_id, 0):
                    continue  # a duplicate after a resume: drop it
                self.last_seq[msg.job_id] = msg.seq
                if msg.content.get("kind") in ("done", "failed", "cancelled"):
                    self._finished.add(msg.job_id)
            return msg
        return None

    def _check_following(self, following: object) -> None:
        """A pong: the server forwards ``following`` of this client's jobs. Fewer than this client
        follows means it was dropped (it fell behind or went silent): subscribe again, at most
        once per PEER_TIMEOUT_S (a job that expired on the server stays unfollowed)."""
        expected = sum(1 for j in self.last_seq if j not in self._finished)
        now = time.monotonic()
        if isinstance(following, int) and following < expected and now >= self._next_resubscribe:
            self._next_resubscribe = now + protocol.PEER_TIMEOUT_S
            self._resubscribe()

    def _keep_alive(self) -> None:
        """Ping when nothing was sent for PING_EVERY_S; a fresh socket when the server stayed
        silent for PEER_TIMEOUT_S after a ping (what the ZMTP heartbeat did, without its abort)."""
        now = time.monotonic()
        if self._pinged and now - self._last_heard > protocol.PEER_TIMEOUT_S:
            self._last_heard, self._pinged = now, False
            self.reconnect()
            return
        if now - self._last_sent >= protocol.PING_EVERY_S:
            if self._send(Message("ping", {}, session=self.session), block=False) is not None:
                self._pinged = True

    def _check_boot(self, msg: Message) -> None:
        boot = msg.extra_header.get("boot")
        if not isinstance(boot, str) or boot == self.server_boot:
            return
        restarted = self.server_boot is not None
        self.server_boot = boot
        if restarted:
            self._resubscribe()

    def _resubscribe(self) -> None:
        """Ask again for the events of every followed job (their replies are not awaited)."""
        for job_id, seq in self.last_seq.items():
            if job_id not in self._finished:
                self._send(Message("resume", {"last_seq": seq}, job_id=job_id, session=self.session), block=False)

    def _is_reply(self, msg: Message, msg_id: str) -> bool:
        parent = msg.extra_header.get("parent_msg_id")
        if parent is None and msg.msg_type == "error":
            parent = msg.content.get("parent_msg_id")
        return parent is None or parent == msg_id  # None: a server older than reply matching

    def request(self, msg_type: str, content: dict[str, Any] | None = None, buffers: list[bytes] | None = None,
                job_id: str | None = None) -> Message:
        """Send one request and return its reply; an ``error`` reply raises BackendError.

        Replies to other requests (late ones, after a timeout) are dropped."""
        msg_id = self._send(Message(msg_type, content or {}, buffers or [], job_id=job_id, session=self.session))
        deadline = time.monotonic() + self.timeout_s
        while True:
            msg = self._recv(deadline - time.monotonic())
            if msg is None:
                raise self._timeout(msg_type)
            if msg.msg_type == "event":
                self.pending_events.append(msg)
                continue
            if not self._is_reply(msg, msg_id):
                continue
            _raise_if_error(msg)
            return msg

    def drain(self, max_messages: int = 100) -> list[Message]:
        """Events received so far, without blocking (at most ``max_messages`` read per call);
        pings the server when nothing was sent for a while (see :meth:`_keep_alive`)."""
        self._keep_alive()
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
        content = self.request("hello", {"client": "mpod123-client"}).content
        self._said_hello = True
        if isinstance(content.get("max_image_bytes"), int):
            self.max_image_bytes = content["max_image_bytes"]
        return content

    def submit(
        self, image: bytes, options: dict[str, Any] | None = None, job_id: str | None = None, views: list[bytes] | tuple = ()
    ) -> str:
        """Queue a job (idempotent by ``job_id``: the same id with the same image and options is the
        same job; with another body it is refused); returns the job id once the backend has stored it.
        ``views``: the extra views' images, one per entry of ``options["views"]`` (their angles).

        An image over the server's limit is refused here, before it is sent (the server would
        drop the connection, and the client would only see a timeout)."""
        if self.max_image_bytes is None and not self._said_hello:
            self.hello()
        if self.max_image_bytes is not None and len(image) > self.max_image_bytes:
            raise BackendError("ImageTooLarge", f"the image is {len(image)} bytes, over the backend's limit of "
                               f"{self.max_image_bytes}", "send a smaller or compressed image")
        job_id = job_id or uuid.uuid4().hex
        options = options or {}
        if views and self.max_image_bytes is not None and len(image) + sum(map(len, views)) > self.max_image_bytes:
            raise BackendError("ImageTooLarge", f"the images are {len(image) + sum(map(len, views))} bytes together, "
                               f"over the backend's limit of {self.max_image_bytes}", "send smaller or compressed images")
        # a prompt job (text to 3D) sends no image; extra views travel as one more frame each
        frames = [] if "prompt" in options and not image else [image, *views]
        self.request("submit", {"options": options}, frames, job_id=job_id)
        self.last_seq.setdefault(job_id, 0)
        return job_id

    def status(self, job_id: str) -> dict[str, Any]:
        return self.request("status", job_id=job_id).content

    def list_jobs(self) -> list[dict[str, Any]]:
        """Every job of this client's owner, oldest first (fetched page by page)."""
        jobs: list[dict[str, Any]] = []
        offset: int | None = 0
        while offset is not None:
            content = self.request("list", {"offset": offset}).content
            jobs += content["jobs"]
            offset = content.get("next_offset")
        return jobs

    def cancel(self, job_id: str) -> str:
        return self.request("cancel", job_id=job_id).content["state"]

    def resume(self, job_id: str, last_seq: int | None = None) -> dict[str, Any]:
        """Ask again for a job's events after ``last_seq`` (default: the last one seen)."""
        seq = self.last_seq.get(job_id, 0) if last_seq is None else last_seq
        self.last_seq[job_id] = seq
        self._finished.discard(job_id)
        return self.request("resume", {"last_seq": seq}, job_id=job_id).content

    def wait(self, job_id: str, until: tuple[str, ...] = ("done", "failed", "cancelled"), timeout_s: float = 3600.0,
             on_event: Callable[[Message], None] | None = None) -> Message:
        """Block until an event of kind ``until`` for ``job_id``; returns it.

        Besides listening it asks for the job's status every ``STATUS_EVERY_S``: a restarted
        server is noticed (its boot id) and subscribed to again, and events stored but never
        delivered are asked for again."""
        deadline = time.monotonic() + timeout_s
        next_status = time.monotonic() + STATUS_EVERY_S
        self.last_seq.setdefault(job_id, 0)
        while time.monotonic() < deadline:
            for msg in self.drain():
                if on_event is not None:
                    on_event(msg)
                if msg.job_id == job_id and msg.content.get("kind") in until:
                    return msg
            if time.monotonic() >= next_status:
                try:
                    st = self.status(job_id)
                    if st["last_seq"] > self.last_seq.get(job_id, 0):
                        self.resume(job_id)
                except BackendTimeout:
                    pass  # the server is down or restarting: keep waiting until the deadline
                next_status = time.monotonic() + STATUS_EVERY_S
                continue
            self.sock.poll(200)
        raise BackendTimeout(f"job {job_id} did not finish within {timeout_s:.0f} s")
