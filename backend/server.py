"""The ZeroMQ front door: one ROUTER socket, a handler table, event forwarding.

The socket thread only decodes, answers from the job store and forwards
events; jobs run in the executor's processes. Each request gets exactly one
reply (an ``error`` for anything malformed), whose header names the request
(``parent_msg_id``), so a client never takes a late reply for another one.
Everything the server sends carries its ``boot`` id (new at every start), so
a client notices a restart and subscribes again. Events are forwarded from
the store: every client that submitted or resumed a job is sent each event
with a sequence number above the last one it has, in order, so a reconnecting
client that resumes from its last seq sees no gap and no duplicate. A
subscription ends after the job's terminal event has been sent, or when its
client is gone.

Owner of a job: the client's CURVE public key when CURVE is on (a CURVE
socket without an authenticated User-Id is refused, never trusted); otherwise,
with a local token (``serve`` always sets one), the token's holder: the user
who started the backend, whose processes share their jobs; and only in tests
without a token, the ``session`` field of the header. A job of another owner
looks exactly like a missing one, and job ids are per owner.

Bounds per client: a frame is at most ``max_image_bytes`` plus 1 MiB
(MAXMSGSIZE; the peer is dropped otherwise), a message at most
``protocol.MAX_FRAMES`` frames and ``max_message_bytes`` in all (checked
before anything is copied, and nothing of a refused message is kept), and a
server-enforced credit on result chunks: every chunk reply carries a random
``nonce``, a client gets its credit back only by echoing the nonces of the
chunks it has read (``acks`` in its next ``fetch_chunk``), and a client with
``chunk_credit`` chunks unread is refused more. A client that never reads
can make the server hold at most ``chunk_credit`` chunks; it cannot fake an
ack without reading, because the nonce is only in the chunk.

Every service loop is guarded: a failed turn is logged and the next one runs;
a thread that keeps failing stops and :meth:`Server.alive` says so, and
``serve`` then exits non-zero for its service manager to restart it.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import zmq

from . import protocol
from .kinds import view_frames
from .store import TERMINAL, JobIdReused, JobStore, JobStoreError, UnknownJob
from .kinds.prompt import check_submit
from .protocol import Message, ProtocolError

log = logging.getLogger(__name__)
SERVER_NAME = "mpod123-backend"


@dataclass
class ServerConfig:
    bind: str = "tcp://127.0.0.1:5555"
    max_message_bytes: int | None = None
    """Largest whole message (all frames); default: ``max_image_bytes`` plus 2 MiB."""
    max_image_bytes: int = 50 << 20
    max_queued_jobs: int = 1000
    max_jobs_per_client: int = 100
    heartbeat_ivl_ms: int = 2000
    heartbeat_timeout_ms: int = 10000
    result_ttl_s: float = 7 * 24 * 3600.0
    """Finished jobs, their results and work folders are deleted this long after they end."""
    forward_batch: int = 200
    """Events forwarded per job and subscriber per loop turn (bounds a slow client's share)."""
    chunk_credit: int = protocol.CHUNK_CREDIT
    """Result chunks a client may have unread (not acknowledged by their nonce)."""
    sndhwm: int = 1000
    """Messages queued per peer (the ROUTER's send high-water mark, libzmq's default)."""
    rcvhwm: int = 1000
    """Requests queued per peer before the server stops reading from it."""
    local_token: str | None = None
    """Without CURVE: the token a client must send (``auth`` header); None trusts the session
    (in-process tests only: ``serve`` always sets one)."""
    require_loopback: bool | None = None
    """Refuse a bound address that is not loopback; default: when there is no CURVE."""
    max_failing_turns: int = 200
    """Consecutive failed loop turns after which the router thread gives up (``alive()`` False)."""
    info: dict = field(default_factory=dict)
    """Extra facts for the hello reply (the GPUs, the job kind), shown by clients."""
    key_allowed: Callable[[str], bool] | None = None
    """With CURVE: whether a client key (its User-Id) is still on the allow-list. ZAP vets only new
    connections, so without this a key revoked by a SIGHUP reload would keep its open connection."""

    @property
    def message_limit(self) -> int:
        return self.max_message_bytes or self.max_image_bytes + (2 << 20)


@dataclass
class _Sub:
    sent: int
    client_id: str


class Server:
    def __init__(
        self,
        store: JobStore,
        cfg: ServerConfig | None = None,
        context: zmq.Context | None = None,
        configure_socket: Callable[[zmq.Socket], None] | None = None,
    ) -> None:
        """``configure_socket`` sets security options (CURVE) before bind; with it, every
        request must come with an authenticated User-Id."""
        self.store = store
        self.cfg = cfg or ServerConfig()
        self.ctx = context or zmq.Context.instance()
        self._configure = configure_socket
        self._curve = configure_socket is not None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.endpoint: str | None = None
        self.boot = uuid.uuid4().hex
        self.failure: str | None = None
        # (identity, server job id) -> what was sent
        self._subs: dict[tuple[bytes, str], _Sub] = {}
        # identity -> nonces of chunks sent and not yet acknowledged (insertion order: oldest first)
        self._unread: dict[bytes, set[str]] = {}
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

    def alive(self) -> bool:
        """False once the router thread has stopped for any reason other than :meth:`stop`."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _make_socket(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.cfg.max_image_bytes + (1 << 20))
        sock.setsockopt(zmq.SNDHWM, self.cfg.sndhwm)
        sock.setsockopt(zmq.RCVHWM, self.cfg.rcvhwm)
        sock.setsockopt(zmq.HEARTBEAT_IVL, self.cfg.heartbeat_ivl_ms)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, self.cfg.heartbeat_timeout_ms)
        if self._configure is not None:
            self._configure(sock)
        return sock

    def _bind(self) -> zmq.Socket:
        if ";" in self.cfg.bind:
            raise ValueError("a ';' in an endpoint makes the part before it a source address; give a single address")
        sock = self._make_socket()
        try:
            sock.bind(self.cfg.bind)
            endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            must_be_local = self.cfg.require_loopback if self.cfg.require_loopback is not None else not self._curve
            if must_be_local and not protocol.is_loopback(endpoint):
                raise ValueError(f"it listens on {endpoint}, which is not loopback, without CURVE keys; closed")
        except Exception:
            sock.close(0)
            raise
        self.endpoint = endpoint
        return sock

    def _run(self) -> None:
        try:
            sock = self._bind()
        except Exception as exc:
            self._error = f"cannot bind {self.cfg.bind}: {exc}"
            self._ready.set()
            return
        self._ready.set()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        next_expiry = 0.0
        failing = 0
        try:
            while not self._stop.is_set():
                try:
                    if time.monotonic() >= next_expiry:
                        next_expiry = time.monotonic() + 60.0
                        self.store.expire(self.cfg.result_ttl_s)
                    if poller.poll(5 if self._backlog else 50):
                        for _ in range(100):  # drain a burst, but keep forwarding events
                            if not self._receive(sock):
                                break
                    self._forward(sock)
                    failing = 0
                except Exception as exc:  # a bug or a store hiccup must not take the front door down
                    failing += 1
                    if failing == 1:
                        log.exception("router turn failed; continuing")
                    if failing >= self.cfg.max_failing_turns:
                        self.failure = f"the router kept failing: {type(exc).__name__}: {exc}"
                        log.error(self.failure)
                        return
                    time.sleep(0.05)
        finally:
            sock.close(0)

    def _receive(self, sock: zmq.Socket) -> bool:
        """Read one message frame by frame, refusing one with too many frames or bytes before any copy."""
        try:
            first = sock.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        frames = [first]
        size, too_many, more = 0, False, first.more
        while more:  # the whole message is already here (libzmq delivers complete messages)
            frame = sock.recv(copy=False)
            more = frame.more
            size += len(frame)
            if len(frames) > protocol.MAX_FRAMES:
                too_many = True  # keep reading to the end of the message, keeping nothing
            else:
                frames.append(frame)
            del frame
        identity = first.bytes
        if too_many or size > self.cfg.message_limit:
            user_id = _user_id(frames[-1])
            del frames
            what = "too many frames" if too_many else f"{size} bytes, over {self.cfg.message_limit}"
            err = ProtocolError("MessageTooLarge", f"the message has {what}",
                                f"images up to {self.cfg.max_image_bytes} bytes; see max_image_bytes in the hello reply")
            if user_id is not None or not self._curve:
                self._send(sock, identity, self._stamp(protocol.error_reply(err)))
            return True
        user_id = _user_id(frames[-1])
        body = [f.bytes for f in frames[1:]]
        del frames
        self._handle(sock, [identity, *body], user_id)
        return True

    # -------------------------------------------------------------- dispatch
    def _owner(self, msg: Message, user_id: str | None) -> str:
        if self._curve:
            if not user_id:
                raise ProtocolError("Unauthenticated", "this CURVE server has no authenticated key for you",
                                    "the server must run its ZAP allow-list; ask its administrator")
            if self.cfg.key_allowed is not None and not self.cfg.key_allowed(user_id):
                raise ProtocolError("KeyRevoked", "this client's key is no longer on this server's allow-list",
                                    "ask the server's administrator to allow your key again (mpod123 keys allow), "
                                    "then reconnect")
            return f"key:{user_id}"
        if self.cfg.local_token is not None:
            token = msg.extra_header.get("auth")
            if not isinstance(token, str) or not hmac.compare_digest(token.encode(), self.cfg.local_token.encode()):
                raise ProtocolError(
                    "Unauthorized", "this backend serves only the user who started it",
                    "clients of that user find its token by themselves (MPOD123_RUNTIME_DIR or "
                    "~/.local/share/mpod123/runtime/token); other users need their own backend, or CURVE keys",
                )
            return "local"
        return f"session:{msg.session}"

    def _handle(self, sock: zmq.Socket, frames: list[bytes], user_id: str | None = None) -> None:
        identity, body = frames[0], frames[1:]
        msg: Message | None = None
        try:
            msg = protocol.decode(body, max_binary=self.cfg.max_image_bytes + (1 << 20))
            owner = self._owner(msg, user_id) if msg.msg_type != "hello" else ""
            reply = self._handlers.get(msg.msg_type, self._unexpected)(identity, owner, msg)
        except ProtocolError as exc:
            reply = protocol.error_reply(exc, msg)
        except UnknownJob as exc:
            reply = protocol.error_reply(ProtocolError("UnknownJob", str(exc), "check the job id"), msg)
        except JobIdReused as exc:
            reply = protocol.error_reply(ProtocolError("JobIdReused", str(exc), "choose a new job id"), msg)
        except JobStoreError as exc:
            reply = protocol.error_reply(ProtocolError("Refused", str(exc)), msg)
        except Exception as exc:  # a bug must not take the front door down
            log.exception("handler failed")
            reply = protocol.error_reply(ProtocolError("ServerError", f"{type(exc).__name__}: {exc}"), msg)
        if reply is not None:
            if msg is not None:
                reply.extra_header["parent_msg_id"] = msg.msg_id
            self._send(sock, identity, self._stamp(reply))

    def _stamp(self, msg: Message) -> Message:
        msg.extra_header["boot"] = self.boot
        return msg

    _backlog = False

    def _send(self, sock: zmq.Socket, identity: bytes, msg: Message) -> bool:
        try:
            sock.send_multipart([identity, *protocol.encode(msg)], zmq.NOBLOCK)
            return True
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer is gone (ROUTER_MANDATORY); EAGAIN: it is full
            if exc.errno == zmq.EHOSTUNREACH:
                for key in [k for k in self._subs if k[0] == identity]:
                    del self._subs[key]
                self._unread.pop(identity, None)
            else:
                self._backlog = True
            return False

    def _unexpected(self, identity: bytes, owner: str, msg: Message) -> Message:
        raise ProtocolError("UnexpectedMessage", f"{msg.msg_type} is a reply type; clients do not send it")

    # -------------------------------------------------------------- handlers
    def _hello(self, identity: bytes, owner: str, msg: Message) -> Message:
        content = {
            "server": SERVER_NAME, "versions": list(protocol.SUPPORTED_VERSIONS), "version": _package_version(),
            "max_image_bytes": self.cfg.max_image_bytes, "max_chunk_bytes": protocol.MAX_CHUNK_BYTES,
            "chunk_credit": self.cfg.chunk_credit,
            "boot": self.boot,
        }
        from mpod123.runtime.doctor import hello_summary  # "GPU: ..., models: ready | will download N GB" (cached, no torch)

        content["summary"] = hello_summary(self.cfg.info)
        return Message("hello_reply", {**self.cfg.info, **content}, session=msg.session)

    def _submit(self, identity: bytes, owner: str, msg: Message) -> Message:
        # a prompt job (text to 3D) has no image frame
        image = b"" if check_submit(msg.content["options"], msg.buffers) else msg.buffers[0] if msg.buffers else None
        if image is None:
            raise ProtocolError("BadFrames", "submit needs the image as a binary frame (or options.prompt and none)",
                                "send the image file's bytes")
        if len(image) > self.cfg.max_image_bytes:
            raise ProtocolError("ImageTooLarge", f"the image is {len(image)} bytes, over {self.cfg.max_image_bytes}",
                                "send a smaller or compressed image")
        if not image and "prompt" not in msg.content["options"]:
            raise ProtocolError("BadImage", "the image frame is empty", "send the image file's bytes")
        options = msg.content["options"]
        if isinstance(options, dict) and options.get("kind") == "texture":
            from .kinds.texture import texture_input  # photo + mesh, checked, stored together

            image = texture_input(options, msg.buffers, self.cfg.max_image_bytes)
        else:
            try:  # extra views: one more frame each, angles in options["views"] (backend/view_frames.py)
                if view_frames.check_views(options, msg.buffers[1:]):
                    image = view_frames.pack(image, msg.buffers[1:])
            except view_frames.ViewFramesError as exc:
                raise ProtocolError("BadViews", str(exc), exc.hint) from None
        try:
            existing = self.store.get_owned(msg.job_id, owner)
        except UnknownJob:
            existing = None
        if existing is None:
            queued = self.store.count(states=("queued", "running"))
            if queued >= self.cfg.max_queued_jobs:
                raise ProtocolError("QueueFull", f"{queued} jobs are waiting", "try again later")
            mine = self.store.count(owner=owner, states=("queued", "running"))
            if mine >= self.cfg.max_jobs_per_client:
                raise ProtocolError("TooManyJobs", f"you have {mine} unfinished jobs", "wait for some to finish")
        job, created = self.store.submit(msg.job_id, owner, msg.content["options"], image)
        self._subs.setdefault((identity, job.job_id), _Sub(0, job.client_id))
        return Message("ack", {"state": job.state, "created": created, "last_seq": job.last_seq},
                       job_id=job.client_id, session=msg.session)

    def _job_content(self, job) -> dict:
        return {
            "state": job.state, "error": job.error, "attempts": job.attempts, "last_seq": job.last_seq,
            "created": job.created, "updated": job.updated, "result_size": job.result_size,
        }

    def _status(self, identity: bytes, owner: str, msg: Message) -> Message:
        job = self.store.get_owned(msg.job_id, owner)
        return Message("status_reply", self._job_content(job), job_id=job.client_id, session=msg.session)

    def _list(self, identity: bytes, owner: str, msg: Message) -> Message:
        offset = msg.content.get("offset", 0)
        limit = min(msg.content.get("limit", protocol.MAX_LIST_PAGE), protocol.MAX_LIST_PAGE)
        page = self.store.list(owner=owner, offset=offset, limit=limit + 1)
        more = len(page) > limit
        jobs = [{"job_id": j.client_id, **self._job_content(j)} for j in page[:limit]]
        return Message("list_reply", {"jobs": jobs, "next_offset": offset + limit if more else None}, session=msg.session)

    def _cancel(self, identity: bytes, owner: str, msg: Message) -> Message:
        job = self.store.get_owned(msg.job_id, owner)
        job = self.store.request_cancel(job.job_id)
        return Message("cancel_reply", {"state": job.state}, job_id=job.client_id, session=msg.session)

    def _resume(self, identity: bytes, owner: str, msg: Message) -> Message:
        job = self.store.get_owned(msg.job_id, owner)
        self._subs[(identity, job.job_id)] = _Sub(int(msg.content["last_seq"]), job.client_id)
        return Message("status_reply", self._job_content(job), job_id=job.client_id, session=msg.session)

    def _result_path(self, client_id: str, owner: str) -> tuple[Path, object]:
        job = self.store.get_owned(client_id, owner)
        if job.state != "done" or not job.result_path:
            raise ProtocolError("NotReady", f"job {client_id} is {job.state}; its result is not available",
                                "wait for the 'done' event")
        path = Path(job.result_path)
        if not path.is_file():
            raise ProtocolError("ResultMissing", f"the result of {client_id} is gone (expired or deleted)", "submit again")
        return path, job

    def _result_info(self, identity: bytes, owner: str, msg: Message) -> Message:
        path, job = self._result_path(msg.job_id, owner)
        return Message("result_info_reply", {"size": job.result_size, "sha256": job.result_sha256,
                                             "name": f"{job.client_id}{path.suffix}"},
                       job_id=msg.job_id, session=msg.session)

    def _fetch_chunk(self, identity: bytes, owner: str, msg: Message) -> Message:
        unread = self._unread.setdefault(identity, set())
        acks = msg.content.get("acks", [])
        if isinstance(acks, list):
            unread.difference_update(a for a in acks if isinstance(a, str))
        if len(unread) >= self.cfg.chunk_credit:
            raise ProtocolError(
                "TooManyChunks", f"{len(unread)} chunks sent to you are not acknowledged",
                "read the chunks you asked for and send their nonces in 'acks' with the next fetch_chunk",
            )
        path, job = self._result_path(msg.job_id, owner)
        offset, length = msg.content["offset"], msg.content["length"]
        if offset > job.result_size:
            raise ProtocolError("BadField", f"offset {offset} is past the end ({job.result_size} bytes)")
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        nonce = secrets.token_hex(8)
        unread.add(nonce)
        if len(self._unread) > 10000:  # forget the oldest peers (gone ones are dropped on EHOSTUNREACH)
            for old in list(self._unread)[:1000]:
                del self._unread[old]
        return Message("chunk", {"offset": offset, "size": len(data), "nonce": nonce}, [data],
                       job_id=msg.job_id, session=msg.session)

    # ------------------------------------------------------------ forwarding
    def _revoked(self, owner: str) -> bool:
        """A job of a CURVE key that has been taken off the allow-list: its streams stop."""
        return (self.cfg.key_allowed is not None and owner.startswith("key:")
                and not self.cfg.key_allowed(owner[len("key:"):]))

    def _forward(self, sock: zmq.Socket) -> None:
        self._backlog = False
        if not self._subs:
            return
        jobs: dict[str, object] = {}
        for key, sub in list(self._subs.items()):
            identity, job_id = key
            try:
                if job_id not in jobs:
                    try:
                        jobs[job_id] = self.store.get(job_id)
                    except UnknownJob:
                        jobs[job_id] = None
                job = jobs[job_id]
                if job is None or self._revoked(job.owner):
                    del self._subs[key]
                    continue
                if job.last_seq <= sub.sent:
                    if job.state in TERMINAL:  # everything up to the terminal event is sent: done
                        del self._subs[key]
                    continue
                for event in self.store.events_since(job_id, sub.sent, limit=self.cfg.forward_batch):
                    msg = Message(
                        "event",
                        {"kind": event.kind, "time": event.created, **event.content},
                        [event.blob] if event.blob is not None else [],
                        job_id=sub.client_id,
                        seq=event.seq,
                    )
                    if not self._send(sock, identity, self._stamp(msg)):
                        break
                    if key not in self._subs:
                        break
                    sub.sent = event.seq
            except Exception:  # one job's bad data must not stop the others' events
                log.exception("forwarding events of job %s failed; dropping that subscription", job_id)
                self._subs.pop(key, None)


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


class ServiceFailed(RuntimeError):
    """A service thread stopped by itself; the process should exit non-zero and be restarted."""


def serve_forever(server: Server, executor, poll_s: float = 0.5) -> None:
    """Block until interrupted (KeyboardInterrupt) and then stop both cleanly; raise
    :class:`ServiceFailed` when the router or the dispatcher stops by itself."""
    try:
        while True:
            time.sleep(poll_s)
            if not server.alive():
                raise ServiceFailed(server.failure or "the router thread stopped")
            if not executor.alive():
                raise ServiceFailed(getattr(executor, "failure", None) or "the dispatcher thread stopped")
    finally:
        executor.stop()
        server.stop()
