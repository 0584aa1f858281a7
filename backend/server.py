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

Owner of a job: the client's CURVE public key (a CURVE socket without an
authenticated User-Id is refused, never trusted); ``local`` for the local
client key that ``serve`` made in the user's runtime folder (every process of
that user shares its jobs); and only in in-process tests without CURVE, the
``session`` field of the header. ``serve`` is always CURVE, on loopback too,
so the handshake and ZAP decide before libzmq accepts a single frame of a
peer: an unauthenticated peer can make the server hold nothing. A job of
another owner looks exactly like a missing one, and job ids are per owner.

Bounds per client: a frame is at most ``max_image_bytes`` plus 1 MiB
(MAXMSGSIZE; the peer is dropped otherwise), a message at most
``protocol.MAX_FRAMES`` frames and ``max_message_bytes`` in all (checked
before anything is copied, and nothing of a refused message is kept), and a
server-enforced credit on result chunks: every chunk reply carries a random
``nonce``, a client gets its credit back only by echoing the nonces of the
chunks it has read (``acks`` in its next ``fetch_chunk``), and a client with
``chunk_credit`` chunks unread is refused more. A client that never reads
can make the server hold at most ``chunk_credit`` chunks; it cannot fake an
ack without reading, because the nonce is only in the chunk. Every send is
non-blocking; a peer whose queue is full, or that is sent more than
``max_peer_bytes`` without a word from it, is dropped (:mod:`backend.peers`),
never waited for.

Every service loop is guarded: a failed turn is logged and the next one runs;
a thread that keeps failing stops and :meth:`Server.alive` says so, and
``serve`` then exits non-zero for its service manager to restart it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata

import zmq

from . import protocol
from .handlers import SERVER_NAME, RequestHandlers  # noqa: F401  (SERVER_NAME: part of this module's API)
from .peers import Peers
from .store import TERMINAL, JobIdReused, JobStore, JobStoreError, UnknownJob
from .protocol import Message, ProtocolError

log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    bind: str = "tcp://127.0.0.1:5555"
    max_message_bytes: int | None = None
    """Largest whole message (all frames); default: ``max_image_bytes`` plus 2 MiB."""
    max_image_bytes: int = 50 << 20
    max_queued_jobs: int = 1000
    max_jobs_per_client: int = 100
    max_follows_per_owner: int = 1000
    """Jobs one owner may follow at once over all its connections (a job followed from three connections
    counts three); past it a follow is refused. Every follow costs the router work each turn until its job
    ends, so without a bound fresh connections resubscribing to a queued job would pile up."""
    peer_timeout_s: float = protocol.PEER_TIMEOUT_S
    """A client not heard from for this long (clients ping every ``protocol.PING_EVERY_S``) and
    following no job is forgotten. ZMTP heartbeats stay off: libzmq aborts under them when a peer
    stops reading."""
    max_peer_bytes: int = 96 << 20
    """Bytes sent to one client since it was last heard, past which it is dropped (it does not read).
    Above the chunk credit's worth (``chunk_credit`` x ``protocol.MAX_CHUNK_BYTES``)."""
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
    local_key: str | None = None
    """The local client's CURVE public key (Z85), whose owner is ``local``: the user who started
    the backend (``serve`` makes the pair in that user's runtime folder)."""
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
    owner: str = ""


class Server(RequestHandlers):
    _sub_type = _Sub

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
        # identity -> server job id -> what was sent
        self._subs: dict[bytes, dict[str, _Sub]] = {}
        self.peers = Peers(self.cfg.max_peer_bytes, self.cfg.peer_timeout_s)
        self._handlers = self._handler_table()
        self._version = _package_version()
        self._failures_logged = 0

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

    def subscriptions(self) -> int:
        """Follows held now, over every connection: what the router forwards events to each turn."""
        return sum(len(subs) for subs in list(self._subs.values()))

    def alive(self) -> bool:
        """False once the router thread has stopped for any reason other than :meth:`stop`."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def make_socket(self) -> zmq.Socket:
        """The ROUTER socket with every option the server sets (security included), not yet bound."""
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.cfg.max_image_bytes + (1 << 20))
        sock.setsockopt(zmq.SNDHWM, self.cfg.sndhwm)
        sock.setsockopt(zmq.RCVHWM, self.cfg.rcvhwm)
        # no ZMTP heartbeats (HEARTBEAT_IVL stays 0): liveness is the protocol's ping/pong
        if self._configure is not None:
            self._configure(sock)
        return sock

    def _bind(self) -> zmq.Socket:
        if ";" in self.cfg.bind:
            raise ValueError("a ';' in an endpoint makes the part before it a source address; give a single address")
        sock = self.make_socket()
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
        next_expiry = next_sweep = 0.0
        failing = 0
        try:
            while not self._stop.is_set():
                try:
                    if time.monotonic() >= next_expiry:
                        next_expiry = time.monotonic() + 60.0
                        self.store.expire(self.cfg.result_ttl_s)
                    if time.monotonic() >= next_sweep:
                        next_sweep = time.monotonic() + 1.0
                        self._sweep()
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
        self.peers.heard(identity)  # under CURVE (serve), only an authenticated peer gets here
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
            return "local" if user_id == self.cfg.local_key else f"key:{user_id}"
        return f"session:{msg.session}"

    def _handle(self, sock: zmq.Socket, frames: list[bytes], user_id: str | None = None) -> None:
        identity, body = frames[0], frames[1:]
        msg: Message | None = None
        try:
            msg = protocol.decode(body, max_binary=self.cfg.max_image_bytes + (1 << 20))
            owner = self._owner(msg, user_id) if msg.msg_type not in ("hello", "ping") else ""
            reply = self._handlers.get(msg.msg_type, self._unexpected)(identity, owner, msg)
        except ProtocolError as exc:
            reply = protocol.error_reply(exc, msg)
        except UnknownJob as exc:
            reply = protocol.error_reply(ProtocolError("UnknownJob", str(exc), "check the job id"), msg)
        except JobIdReused as exc:
            reply = protocol.error_reply(ProtocolError("JobIdReused", str(exc), "choose a new job id"), msg)
        except JobStoreError as exc:
            reply = protocol.error_reply(ProtocolError("Refused", str(exc)), msg)
        except Exception as exc:  # a bug must not take the front door down; logged in a bounded way
            self._failures_logged += 1
            if self._failures_logged <= 20:
                log.exception("handler failed")
            reply = protocol.error_reply(ProtocolError("ServerError", f"{type(exc).__name__}: the server failed "
                                                       "on this request (its log has the details)"), msg)
        if reply is not None:
            if msg is not None:
                reply.extra_header["parent_msg_id"] = msg.msg_id
            self._send(sock, identity, self._stamp(reply))

    def _stamp(self, msg: Message) -> Message:
        msg.extra_header["boot"] = self.boot
        return msg

    _backlog = False

    def _send(self, sock: zmq.Socket, identity: bytes, msg: Message) -> bool:
        """Send without ever waiting; a peer that cannot take it is dropped (:mod:`backend.peers`)."""
        frames = [identity, *protocol.encode(msg)]
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer is gone (ROUTER_MANDATORY); EAGAIN: it is full
            if exc.errno == zmq.EHOSTUNREACH:
                self._subs.pop(identity, None)
                self.peers.forget(identity)
            else:
                self._drop(identity, f"it fell behind: {self.cfg.sndhwm} messages wait unread")
            return False
        if not self.peers.sent(identity, sum(map(len, frames))):
            self._drop(identity, f"it fell behind: over {self.cfg.max_peer_bytes >> 20} MiB sent since it was last heard")
        return True

    def _drop(self, identity: bytes, reason: str) -> None:
        """Forget a peer's subscriptions and chunk credit; its next ping tells it to subscribe again."""
        self._subs.pop(identity, None)
        self.peers.drop(identity, reason)

    def _sweep(self) -> None:
        """Forget peers silent for ``peer_timeout_s`` that follow no job. One that follows jobs keeps
        them (a client may only listen); its queue and byte budget bound what it can cost."""
        for identity in self.peers.silent():
            if identity not in self._subs:
                self.peers.forget(identity)

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
        for identity, subs in list(self._subs.items()):
            for job_id, sub in list(subs.items()):
                try:
                    if job_id not in jobs:
                        try:
                            jobs[job_id] = self.store.get(job_id)
                        except UnknownJob:
                            jobs[job_id] = None
                    job = jobs[job_id]
                    if job is None or self._revoked(job.owner):
                        subs.pop(job_id, None)
                        continue
                    if job.last_seq <= sub.sent:
                        if job.state in TERMINAL:  # everything up to the terminal event is sent: done
                            subs.pop(job_id, None)
                        continue
                    events = self.store.events_since(job_id, sub.sent, limit=self.cfg.forward_batch)
                    self._backlog |= len(events) >= self.cfg.forward_batch
                    for event in events:
                        msg = Message(
                            "event",
                            {"kind": event.kind, "time": event.created, **event.content},
                            [event.blob] if event.blob is not None else [],
                            job_id=sub.client_id,
                            seq=event.seq,
                        )
                        if not self._send(sock, identity, self._stamp(msg)):
                            break
                        sub.sent = event.seq
                        if identity not in self._subs:
                            break
                except Exception:  # one job's bad data must not stop the others' events
                    log.exception("forwarding events of job %s failed; dropping that subscription", job_id)
                    subs.pop(job_id, None)
                if identity not in self._subs:
                    break
            if not subs:
                self._subs.pop(identity, None)


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
