"""The add-on's connection to the backend: free of bpy and torch, usable from any Python.

A thin layer over the backend's own DEALER client (vendored in ``vendor/``,
identical to ``backend/client.py``). What it adds for an interactive host:

* **Connection state without waiting.** A ZeroMQ socket monitor reports
  handshakes and disconnects; :meth:`AddonClient.drain` reads it with NOBLOCK
  and sets :attr:`state` ("connecting", "connected", "lost", "refused").
  A failed CURVE handshake becomes a "wrong keys" message at once.
* **Resume after a reconnect.** When the connection comes back (the backend
  restarted, the network returned), every job still watched is resumed from
  the last sequence number seen, so its event stream continues with no gap
  and no duplicate.
* **A fresh socket after a timeout.** A DEALER queues unanswered requests and
  would deliver their late replies to the next request; after a timeout the
  socket is replaced (the session, the watched jobs and their sequence
  numbers are kept).
* **Bounded waits only.** Requests wait at most ``timeout_s``; :meth:`drain`
  never waits.

Everything raises :class:`BackendError` (the backend said no) or
:class:`BackendTimeout` (no answer; the message lists the likely causes).

For a host whose main thread must never wait (Blender), :class:`network.NetworkThread`
owns an ``AddonClient`` on a thread of its own: the host queues calls and
takes their outcomes and the jobs' events, both without waiting. The ZeroMQ
sockets never leave that thread.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import zmq
import zmq.utils.z85
from zmq.utils.monitor import recv_monitor_message

from .vendor import protocol
from .vendor.client import BackendError, BackendTimeout, Client
from .vendor.protocol import Message, is_loopback

__all__ = [
    "FINAL_KINDS",
    "AddonClient",
    "BackendError",
    "BackendTimeout",
    "Message",
    "is_loopback",
    "parse_key",
    "protocol",
]

FINAL_KINDS = ("done", "failed", "cancelled")
_MONITORED = (
    zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_AUTH,
)


def parse_key(text: str, what: str) -> bytes:
    """A CURVE key given as its 40 Z85 characters (as in ``mpod123 keys init``'s files)."""
    key = text.strip().strip('"').encode("ascii", "replace")
    if len(key) != 40:
        raise ValueError(f"the {what} must be 40 Z85 characters (the quoted value in its .key file), got {len(key)}")
    try:
        zmq.utils.z85.decode(key)
    except (ValueError, KeyError):
        raise ValueError(f"the {what} is not a valid Z85 key") from None
    return key


def read_key_file(path: str | Path) -> tuple[str, str]:
    """(public, secret) from a ZeroMQ certificate file (``server.key`` or ``NAME.key_secret``); secret may be ''."""
    import zmq.auth

    public, secret = zmq.auth.load_certificate(Path(path))
    return public.decode(), (secret or b"").decode()


class AddonClient:
    """One DEALER connection to the backend, with state, resume and bounded waits."""

    def __init__(
        self,
        endpoint: str,
        session: str | None = None,
        timeout_s: float = 10.0,
        server_key: bytes | None = None,
        client_keys: tuple[bytes, bytes] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.session = session or uuid.uuid4().hex
        self.timeout_s = float(timeout_s)
        self._server_key = server_key
        self._client_keys = client_keys
        self.state = "connecting"
        self.message = ""
        """Why the state is what it is, in words (empty when connected)."""
        self.server_info: dict[str, Any] = {}
        self.watched: set[str] = set()
        """Jobs to resume after a reconnect: submitted or resumed here and not finished."""
        self.notices: list[str] = []
        """Connection changes since the last drain, for the host to show."""
        self._ever_connected = False
        self._last_seq: dict[str, int] = {}
        self._carry: list[Message] = []
        self._open()

    # ------------------------------------------------------------ plumbing
    def _open(self) -> None:
        self.client = Client(self.endpoint, self.session, self.timeout_s, self._server_key, self._client_keys)
        self.client.last_seq = self._last_seq
        self.monitor = self.client.sock.get_monitor_socket(_MONITORED)

    def _close_socket(self) -> None:
        self._carry.extend(self.client.pending_events)
        self.client.pending_events = []
        try:
            self.client.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(0)
        self.client.close()

    def reset(self) -> None:
        """Replace the socket (after a timeout), keeping the session, watched jobs and sequence numbers."""
        self._close_socket()
        self._open()

    def close(self) -> None:
        self._close_socket()
        self.state = "closed"

    @property
    def last_seq(self) -> dict[str, int]:
        return self._last_seq

    def _call(self, fn, *args, **kw):
        """Run a request; on a timeout replace the socket and mark the connection lost."""
        try:
            return fn(*args, **kw)
        except BackendTimeout as exc:
            self.reset()
            self.state, self.message = "lost", str(exc)
            raise

    def _poll_monitor(self) -> bool:
        """Read connection events (NOBLOCK); True when a connection was (re)established."""
        reconnected = False
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return reconnected
            except zmq.ZMQError:
                return reconnected
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                if self.state != "connected":
                    reconnected = self._ever_connected
                    self.notices.append(("reconnected to " if self._ever_connected else "connected to ") + self.endpoint)
                self._ever_connected = True
                self.state, self.message = "connected", ""
            elif kind == zmq.EVENT_DISCONNECTED:
                if self.state == "connected":
                    self.state = "lost"
                    self.message = f"lost the connection to {self.endpoint}; waiting for it to come back"
                    self.notices.append(self.message)
            elif kind in _HANDSHAKE_FAILED:
                self.state = "refused"
                self.message = (
                    f"the backend at {self.endpoint} refused the connection: "
                    + ("check the server public key and that this client's key is on the server's allow-list"
                       if self._server_key else "it expects encryption; set the server key and the client keys")
                )
                self.notices.append(self.message)

    # --------------------------------------------------------------- calls
    def hello(self) -> dict[str, Any]:
        """Ask the backend who it is (bounded by ``timeout_s``); marks the connection up."""
        info = self._call(self.client.hello)
        self.server_info = info
        self._poll_monitor()
        self._ever_connected = True
        self.state, self.message = "connected", ""
        return info

    def submit(self, image: bytes, options: dict[str, Any] | None = None, job_id: str | None = None,
               views: list[bytes] | tuple = (), extra: list[bytes] | None = None) -> str:
        if extra:  # more binary frames after the image (a texture job's mesh)
            job_id = job_id or uuid.uuid4().hex
            self._call(self.client.request, "submit", {"options": options or {}}, [image, *extra], job_id=job_id)
            self.client.last_seq.setdefault(job_id, 0)
        else:
            job_id = self._call(self.client.submit, image, options, job_id, views)
        self.watched.add(job_id)
        return job_id

    def cancel(self, job_id: str) -> str:
        return self._call(self.client.cancel, job_id)

    def status(self, job_id: str) -> dict[str, Any]:
        return self._call(self.client.status, job_id)

    def list_jobs(self) -> list[dict[str, Any]]:
        return self._call(self.client.list_jobs)

    def resume(self, job_id: str, last_seq: int | None = None) -> dict[str, Any]:
        """Continue a job's event stream after ``last_seq`` (default: the last seen); watches it."""
        reply = self._call(self.client.resume, job_id, last_seq)
        self.watched.add(job_id)
        return reply

    def fetch(self, job_id: str, dest: str | Path) -> Path:
        """Download the result (chunked, sha256-checked, resumable from ``dest.part``)."""
        return self._call(self.client.fetch, job_id, dest)

    def drain(self, max_messages: int = 100) -> list[Message]:
        """Events received so far, oldest first, without waiting; resumes watched jobs after a reconnect."""
        if self._poll_monitor():
            for job_id in sorted(self.watched):
                try:
                    self.resume(job_id)
                except BackendError as exc:  # the job is unknown to this backend (another data folder)
                    self.watched.discard(job_id)
                    self.notices.append(f"cannot resume {job_id}: {exc}")
                except BackendTimeout:
                    break  # the socket was replaced; the next handshake tries again
        events = self._carry + self.client.drain(max_messages)
        self._carry = []
        for msg in events:
            if msg.content.get("kind") in FINAL_KINDS:
                self.watched.discard(msg.job_id)
        return events

    def take_notices(self) -> list[str]:
        notes, self.notices = self.notices, []
        return notes


# ----------------------------------------------------------- network thread
