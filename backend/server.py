"""The ZeroMQ front door: one ROUTER socket, a handler table, event forwarding.

The socket thread only decodes, answers from the job store and forwards
events; jobs run in the executor's processes. Each request gets exactly one
reply (an ``error`` for anything malformed), so a client never waits on a
message that was silently dropped. Events are forwarded from the store: every
client that submitted or resumed a job is sent each event with a sequence
number above the last one it has, in order, so a reconnecting client that
resumes from its last seq sees no gap and no duplicate.

Owner of a job: the client's CURVE public key when CURVE is on; otherwise the
``session`` field of the header (loopback only, where every local user is
trusted anyway). A job of another owner looks exactly like a missing one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import zmq

from . import protocol
from .jobs import JobStore, JobStoreError, UnknownJob
from .protocol import Message, ProtocolError

log = logging.getLogger(__name__)
SERVER_NAME = "mpod123-backend"


@dataclass
class ServerConfig:
    bind: str = "tcp://127.0.0.1:5555"
    max_message_bytes: int = protocol.MAX_BINARY_BYTES + (1 << 20)
    max_image_bytes: int = 50 << 20
    max_queued_jobs: int = 1000
    max_jobs_per_client: int = 100
    heartbeat_ivl_ms: int = 2000
    heartbeat_timeout_ms: int = 10000
    result_ttl_s: float = 7 * 24 * 3600.0
    """Finished jobs and their results are deleted this long after they end."""
    forward_batch: int = 200
    """Events forwarded per job and subscriber per loop turn (bounds a slow client's share)."""
    info: dict = field(default_factory=dict)
    """Extra facts for the hello reply (the GPUs, the job kind), shown by clients."""


class Server:
    def __init__(
        self,
        store: JobStore,
        cfg: ServerConfig | None = None,
        context: zmq.Context | None = None,
        configure_socket: Callable[[zmq.Socket], None] | None = None,
    ) -> None:
        """``configure_socket`` sets security options (CURVE) before bind."""
        self.store = store
        self.cfg = cfg or ServerConfig()
        self.ctx = context or zmq.Context.instance()
        self._configure = configure_socket
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.endpoint: str | None = None
        # (identity, job_id) -> last seq sent
        self._subs: dict[tuple[bytes, str], int] = {}
        self._handlers: dict[str, Callable[[bytes, str, Message], Message | None]] = {
            "hello": self._hello,
            "submit": self._submit,
            "status": self._status,
            "list": self._list,
            "cancel": self._cancel,
            "resume": self._resume,
            "result_info": self._result_info,
            "fetch_chunk": self._fetch_chunk,
        }

    # ------------------------------------------------------------- lifecycle
    def start(self) -> str:
        """Bind and serve on a thread; returns the bound endpoint (with the real port)."""
        self._thread = threading.Thread(target=self._run, name="mpod123-router", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the server socket did not come up")
        if self.endpoint is None:
            raise RuntimeError(self._error)
        return self.endpoint

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _make_socket(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.cfg.max_message_bytes)
        sock.setsockopt(zmq.HEARTBEAT_IVL, self.cfg.heartbeat_ivl_ms)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, self.cfg.heartbeat_timeout_ms)
        if self._configure is not None:
            self._configure(sock)
        return sock

    def _run(self) -> None:
        try:
            sock = self._make_socket()
            sock.bind(self.cfg.bind)
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except Exception as exc:
            self._error = f"cannot bind {self.cfg.bind}: {exc}"
            self._ready.set()
            return
        self._ready.set()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        next_expiry = 0.0
        try:
            while not self._stop.is_set():
                if time.monotonic() >= next_expiry:
                    self.store.expire(self.cfg.result_ttl_s)
                    next_expiry = time.monotonic() + 60.0
                if poller.poll(50):
                    for _ in range(100):  # drain a burst, but keep forwarding events
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._handle(sock, [f.bytes for f in frames], _user_id(frames[-1]))
                self._forward(sock)
        finally:
            sock.close(0)

    # -------------------------------------------------------------- dispatch
    def _handle(self, sock: zmq.Socket, frames: list[bytes], user_id: str | None = None) -> None:
        identity, body = frames[0], frames[1:]
        msg: Message | None = None
        try:
            msg = protocol.decode(body)
            owner = f"key:{user_id}" if user_id else f"session:{msg.session}"
            reply = self._handlers.get(msg.msg_type, self._unexpected)(identity, owner, msg)
        except ProtocolError as exc:
            reply = protocol.error_reply(exc, msg)
        except UnknownJob as exc:
            reply = protocol.error_reply(ProtocolError("UnknownJob", str(exc), "check the job id"), msg)
        except JobStoreError as exc:
            reply = protocol.error_reply(ProtocolError("Refused", str(exc)), msg)
        except Exception as exc:  # a bug must not take the front door down
            log.exception("handler failed")
            reply = protocol.error_reply(ProtocolError("ServerError", f"{type(exc).__name__}: {exc}"), msg)
        if reply is not None:
            self._send(sock, identity, reply)

    def _send(self, sock: zmq.Socket, identity: bytes, msg: Message) -> bool:
        try:
            sock.send_multipart([identity, *protocol.encode(msg)], zmq.NOBLOCK)
            return True
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer is gone (ROUTER_MANDATORY); EAGAIN: it is full
            if exc.errno == zmq.EHOSTUNREACH:
                for key in [k for k in self._subs if k[0] == identity]:
                    del self._subs[key]
            return False

    def _unexpected(self, identity: bytes, owner: str, msg: Message) -> Message:
        raise ProtocolError("UnexpectedMessage", f"{msg.msg_type} is a reply type; clients do not send it")

    # -------------------------------------------------------------- handlers
    def _hello(self, identity: bytes, owner: str, msg: Message) -> Message:
        content = {"server": SERVER_NAME, "versions": list(protocol.SUPPORTED_VERSIONS), "version": _package_version()}
        from mpod123.doctor import hello_summary  # "GPU: ..., models: ready | will download N GB" (cached, no torch)

        content["summary"] = hello_summary(self.cfg.info)
        return Message("hello_reply", {**self.cfg.info, **content}, session=msg.session)

    def _submit(self, identity: bytes, owner: str, msg: Message) -> Message:
        image = msg.buffers[0]
        if len(image) > self.cfg.max_image_bytes:
            raise ProtocolError("ImageTooLarge", f"the image is {len(image)} bytes, over {self.cfg.max_image_bytes}",
                                "send a smaller or compressed image")
        if not image:
            raise ProtocolError("BadImage", "the image frame is empty", "send the image file's bytes")
        queued = self.store.list(states=("queued", "running"))
        mine = [j for j in queued if j.owner == owner]
        try:
            existing = self.store.get_owned(msg.job_id, owner)
        except UnknownJob:
            existing = None
        if existing is None and len(queued) >= self.cfg.max_queued_jobs:
            raise ProtocolError("QueueFull", f"{len(queued)} jobs are waiting", "try again later")
        if existing is None and len(mine) >= self.cfg.max_jobs_per_client:
            raise ProtocolError("TooManyJobs", f"you have {len(mine)} unfinished jobs", "wait for some to finish")
        job, created = self.store.submit(msg.job_id, owner, msg.content["options"], image)
        self._subs.setdefault((identity, job.job_id), 0)
        return Message("ack", {"state": job.state, "created": created, "last_seq": job.last_seq}, job_id=job.job_id, session=msg.session)

    def _job_content(self, job) -> dict:
        return {
            "state": job.state, "error": job.error, "attempts": job.attempts, "last_seq": job.last_seq,
            "created": job.created, "updated": job.updated, "result_size": job.result_size,
        }

    def _status(self, identity: bytes, owner: str, msg: Message) -> Message:
        job = self.store.get_owned(msg.job_id, owner)
        return Message("status_reply", self._job_content(job), job_id=job.job_id, session=msg.session)

    def _list(self, identity: bytes, owner: str, msg: Message) -> Message:
        jobs = [{"job_id": j.job_id, **self._job_content(j)} for j in self.store.list(owner=owner)]
        return Message("list_reply", {"jobs": jobs}, session=msg.session)

    def _cancel(self, identity: bytes, owner: str, msg: Message) -> Message:
        self.store.get_owned(msg.job_id, owner)
        job = self.store.request_cancel(msg.job_id)
        return Message("cancel_reply", {"state": job.state}, job_id=job.job_id, session=msg.session)

    def _resume(self, identity: bytes, owner: str, msg: Message) -> Message:
        job = self.store.get_owned(msg.job_id, owner)
        self._subs[(identity, job.job_id)] = int(msg.content["last_seq"])
        return Message("status_reply", self._job_content(job), job_id=job.job_id, session=msg.session)

    def _result_path(self, job_id: str, owner: str) -> tuple[Path, object]:
        job = self.store.get_owned(job_id, owner)
        if job.state != "done" or not job.result_path:
            raise ProtocolError("NotReady", f"job {job_id} is {job.state}; its result is not available",
                                "wait for the 'done' event")
        path = Path(job.result_path)
        if not path.is_file():
            raise ProtocolError("ResultMissing", f"the result of {job_id} is gone (expired or deleted)", "submit again")
        return path, job

    def _result_info(self, identity: bytes, owner: str, msg: Message) -> Message:
        path, job = self._result_path(msg.job_id, owner)
        return Message("result_info_reply", {"size": job.result_size, "sha256": job.result_sha256, "name": path.name},
                       job_id=msg.job_id, session=msg.session)

    def _fetch_chunk(self, identity: bytes, owner: str, msg: Message) -> Message:
        path, job = self._result_path(msg.job_id, owner)
        offset, length = msg.content["offset"], msg.content["length"]
        if offset > job.result_size:
            raise ProtocolError("BadField", f"offset {offset} is past the end ({job.result_size} bytes)")
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        return Message("chunk", {"offset": offset, "size": len(data)}, [data], job_id=msg.job_id, session=msg.session)

    # ------------------------------------------------------------ forwarding
    def _forward(self, sock: zmq.Socket) -> None:
        if not self._subs:
            return
        last = {}
        for (identity, job_id), sent in list(self._subs.items()):
            if job_id not in last:
                try:
                    last[job_id] = self.store.get(job_id).last_seq
                except UnknownJob:
                    last[job_id] = -1
            if last[job_id] < 0:
                del self._subs[(identity, job_id)]
                continue
            if last[job_id] <= sent:
                continue
            for event in self.store.events_since(job_id, sent, limit=self.cfg.forward_batch):
                msg = Message(
                    "event",
                    {"kind": event.kind, "time": event.created, **event.content},
                    [event.blob] if event.blob is not None else [],
                    job_id=job_id,
                    seq=event.seq,
                )
                if not self._send(sock, identity, msg):
                    break
                if (identity, job_id) not in self._subs:
                    break
                self._subs[(identity, job_id)] = event.seq


def _package_version() -> str:
    try:
        return metadata.version("mpod123")
    except metadata.PackageNotFoundError:
        return "unknown"


def _user_id(frame: zmq.Frame) -> str | None:
    """The authenticated peer (its CURVE public key, set by the ZAP handler), or None without ZAP."""
    try:
        value = frame.get("User-Id")
    except zmq.ZMQError:
        return None
    return value or None


def serve_forever(server: Server, executor, poll_s: float = 0.5) -> None:
    """Block until interrupted (KeyboardInterrupt) and then stop both cleanly."""
    try:
        while True:
            time.sleep(poll_s)
    finally:
        executor.stop()
        server.stop()
