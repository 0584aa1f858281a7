"""The wire protocol between clients (Blender, batch) and the backend. Standard library only.

A message is a list of ZeroMQ frames, modelled on Jupyter's:

    [MAGIC, header JSON, content JSON, binary frame, ...]

``MAGIC`` names the protocol so that a stray peer is told apart at once. The
header is ``{msg_id, msg_type, version, session, job_id, seq}``; ``seq`` is the
per-job event sequence number (None outside events). Optional header fields
(kept in ``extra_header``): ``parent_msg_id`` on every reply (the request it
answers: a client drops a reply that is not for its current request),
``boot`` on everything a server sends (a new value means the server restarted
and the client subscribes again). Binary frames carry image bytes and result
chunks; nothing is ever pickled.

Liveness is the protocol's own: a client sends ``ping`` when it has sent
nothing for ``PING_EVERY_S`` and the server answers ``pong`` with how many of
the client's jobs it is forwarding (``following``), so a client the server
dropped (it fell behind, or went silent) subscribes again. ZMTP heartbeats
stay off on every socket: libzmq aborts the process when a heartbeat times out
on a peer that stopped reading (zeromq/libzmq #3937, #4364, #4767).

Decoding is strict about what it needs and tolerant of what it does not know:
a wrong frame count, bad JSON, an unknown version or message type, a missing
or mistyped field, or an oversize frame raises :class:`ProtocolError`, which
carries the ``ename``/``evalue``/``hint`` of the error reply; unknown header
or content fields are kept and ignored.

This file is vendored into the Blender add-on by ``build_addon.py`` and must
stay importable without anything outside the standard library.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import stat
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

MAGIC = b"MPOD123"
PROTOCOL_VERSION = "1.0"
SUPPORTED_VERSIONS = ("1.0",)
MAX_JSON_BYTES = 1 << 20
MAX_BINARY_BYTES = 64 << 20
MAX_CHUNK_BYTES = 8 << 20
MAX_LIST_PAGE = 500
CHUNK_CREDIT = 8
"""Result chunks a client may have unread; it acknowledges them by their nonces."""
MAX_ERROR_CHARS = 2000
"""An error's text is cut to this many characters (a job's exception can be any size)."""
PING_EVERY_S = 2.0
"""A client that has sent nothing for this long sends a ``ping`` (the old ZMTP heartbeat interval)."""
PEER_TIMEOUT_S = 10.0
"""A peer not heard from for this long is taken for gone (the old ZMTP heartbeat timeout)."""
MAX_FRAMES = 12
"""Frames in one message (a submit has 4, plus one per extra view, at most 8); more is refused before
anything is copied. The bytes of all frames together stay under the server's message limit."""
JOB_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")

# msg_type -> {field: type or tuple of types} that content must carry
CONTENT_SCHEMA: dict[str, dict[str, Any]] = {
    "hello": {"client": str},
    "hello_reply": {"server": str, "versions": list},
    "submit": {"options": dict},
    "ack": {"state": str},
    "event": {"kind": str},
    "status": {},
    "status_reply": {"state": str},
    "list": {},  # optional: offset, limit (a page of at most MAX_LIST_PAGE jobs)
    "list_reply": {"jobs": list},
    "cancel": {},
    "cancel_reply": {"state": str},
    "resume": {"last_seq": int},
    "result_info": {},
    "result_info_reply": {"size": int, "sha256": str},
    "fetch_chunk": {"offset": int, "length": int},  # optional: acks, the nonces of chunks read
    "chunk": {"offset": int, "size": int},
    "error": {"ename": str, "evalue": str, "hint": str},
    "ping": {},
    "pong": {"following": int},
}
MSG_TYPES = frozenset(CONTENT_SCHEMA)
NEEDS_JOB_ID = frozenset({"submit", "ack", "event", "status", "cancel", "resume", "result_info", "fetch_chunk", "chunk"})
NEEDS_BINARY = {"submit": 1, "chunk": 1}


class ProtocolError(ValueError):
    """A message that cannot be accepted; becomes an ``error`` reply."""

    def __init__(self, ename: str, evalue: str, hint: str = "") -> None:
        evalue = evalue if len(evalue) <= MAX_ERROR_CHARS else evalue[:MAX_ERROR_CHARS] + " [...]"
        super().__init__(f"{ename}: {evalue}")
        self.ename, self.evalue, self.hint = ename, evalue, hint


@dataclass
class Message:
    msg_type: str
    content: dict[str, Any] = field(default_factory=dict)
    buffers: list[bytes] = field(default_factory=list)
    job_id: str | None = None
    seq: int | None = None
    session: str = ""
    msg_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    version: str = PROTOCOL_VERSION
    extra_header: dict[str, Any] = field(default_factory=dict)
    """Header fields this version does not know, kept as they came."""

    @property
    def header(self) -> dict[str, Any]:
        return {
            **self.extra_header,
            "msg_id": self.msg_id,
            "msg_type": self.msg_type,
            "version": self.version,
            "session": self.session,
            "job_id": self.job_id,
            "seq": self.seq,
        }


def encode(msg: Message) -> list[bytes]:
    """Frames for ``msg`` (without any ROUTER identity frames)."""
    return [
        MAGIC,
        json.dumps(msg.header, separators=(",", ":")).encode(),
        json.dumps(msg.content, separators=(",", ":")).encode(),
        *[bytes(b) for b in msg.buffers],
    ]


def _json_object(frame: bytes, what: str) -> dict[str, Any]:
    if len(frame) > MAX_JSON_BYTES:
        raise ProtocolError("MessageTooLarge", f"the {what} frame is {len(frame)} bytes, over {MAX_JSON_BYTES}")
    try:
        value = json.loads(frame.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # also: nesting too deep, a number of thousands of digits
        raise ProtocolError("BadJSON", f"the {what} frame is not JSON: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise ProtocolError("BadJSON", f"the {what} frame must be a JSON object")
    return value


def _check_type(value: Any, expected: Any, name: str) -> None:
    # bool is an int in Python; a protocol int must not be a bool
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        exp = expected.__name__ if isinstance(expected, type) else "/".join(t.__name__ for t in expected)
        raise ProtocolError("BadField", f"{name} must be {exp}, got {type(value).__name__}")


def decode(frames: list[bytes], max_binary: int = MAX_BINARY_BYTES) -> Message:
    """Parse and validate frames (identity frames already stripped)."""
    if len(frames) < 3:
        raise ProtocolError("BadFrames", f"expected at least 3 frames, got {len(frames)}", "send [MAGIC, header, content, *buffers]")
    if frames[0] != MAGIC:
        raise ProtocolError("BadMagic", "the first frame is not this protocol's", "is the client an mpod123 client?")
    header = _json_object(frames[1], "header")
    content = _json_object(frames[2], "content")
    buffers = [bytes(f) for f in frames[3:]]
    for i, b in enumerate(buffers):
        if len(b) > max_binary:
            raise ProtocolError("MessageTooLarge", f"binary frame {i} is {len(b)} bytes, over {max_binary}")
    version = header.get("version")
    if version not in SUPPORTED_VERSIONS:
        raise ProtocolError(
            "UnsupportedVersion",
            f"protocol version {version!r} is not supported",
            f"this backend speaks {', '.join(SUPPORTED_VERSIONS)}; update the add-on or the backend",
        )
    msg_type = header.get("msg_type")
    if msg_type not in MSG_TYPES:
        raise ProtocolError("UnknownMessageType", f"unknown msg_type {msg_type!r}")
    for key, typ in (("msg_id", str), ("session", str)):
        _check_type(header.get(key), typ, f"header.{key}")
    job_id = header.get("job_id")
    if job_id is not None:
        _check_type(job_id, str, "header.job_id")
        if not 1 <= len(job_id) <= 128 or not set(job_id) <= JOB_ID_CHARS:
            raise ProtocolError("BadField", "job_id must be 1-128 characters of ASCII letters, digits, '-', '_' or '.'")
    if msg_type in NEEDS_JOB_ID and job_id is None:
        raise ProtocolError("BadField", f"{msg_type} needs a job_id in the header")
    seq = header.get("seq")
    if seq is not None:
        _check_type(seq, int, "header.seq")
    for key, typ in CONTENT_SCHEMA[msg_type].items():
        if key not in content:
            raise ProtocolError("BadField", f"{msg_type} content needs {key!r}")
        _check_type(content[key], typ, f"content.{key}")
    need = NEEDS_BINARY.get(msg_type, 0)
    if msg_type == "submit" and "prompt" in content["options"]:
        need = 0  # text to 3D: the prompt replaces the image (the server checks both)
    if len(buffers) < need:
        raise ProtocolError("BadFrames", f"{msg_type} needs {need} binary frame(s), got {len(buffers)}")
    if msg_type == "resume" and content["last_seq"] < 0:
        raise ProtocolError("BadField", "last_seq must be >= 0")
    if msg_type == "list":
        for key in ("offset", "limit"):
            if key in content:
                _check_type(content[key], int, f"content.{key}")
                if content[key] < 0:
                    raise ProtocolError("BadField", f"{key} must be >= 0")
    if msg_type == "fetch_chunk" and (content["offset"] < 0 or not 0 < content["length"] <= MAX_CHUNK_BYTES):
        raise ProtocolError("BadField", f"offset must be >= 0 and length in 1..{MAX_CHUNK_BYTES}")
    known = {"msg_id", "msg_type", "version", "session", "job_id", "seq"}
    return Message(
        msg_type, content, buffers, job_id, seq, header["session"], header["msg_id"], version,
        {k: v for k, v in header.items() if k not in known},
    )


def file_digest(path) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a file, read in 1 MiB blocks: how results are checked."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def error_reply(exc: ProtocolError, parent: Message | None = None, session: str = "") -> Message:
    """The ``error`` message answering a rejected request."""
    msg = Message(
        "error",
        {"ename": exc.ename, "evalue": exc.evalue, "hint": exc.hint, "parent_msg_id": parent.msg_id if parent else None},
        job_id=parent.job_id if parent else None,
        session=session,
    )
    if parent is not None:
        msg.extra_header["parent_msg_id"] = parent.msg_id
    return msg


LOCAL_TRANSPORTS = ("ipc://", "inproc://")


def is_loopback(address: str) -> bool:
    """Whether a ZeroMQ endpoint stays on this machine (ipc://, inproc:// or a loopback tcp:// host).

    Shared by the server's bind policy and clients' online-access checks."""
    if ";" in address:
        return False  # libzmq reads "source;destination": the part before ';' is not where it listens
    if address.startswith(LOCAL_TRANSPORTS):
        return True
    if not address.startswith("tcp://"):
        return False
    host = urlparse(address).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', an interface name or a host name: not provably local


# ------------------------------------------------------------------ local keys
# How a client finds a local backend: the key files that backend made in this user's private
# runtime folder (Jupyter's connection-file model, with CURVE keys in place of the HMAC).
LOCAL_SERVER_KEY = "server.key"
LOCAL_SERVER_SECRET = "server.key_secret"
LOCAL_CLIENT_SECRET = "local.key_secret"
KEY_CHARS = 40
"""A CURVE key in Z85 is 40 characters."""


class LocalKeysError(PermissionError):
    """The runtime folder or a key file in it is not private to this user; the message says the fix."""


def runtime_dir() -> Path:
    """Where the local keys live: ``$MPOD123_RUNTIME_DIR``, else ``~/.local/share/mpod123/runtime``
    (``%APPDATA%\\mpod123\\runtime`` on Windows). The folder is 0700 and its files 0600."""
    env = os.environ.get("MPOD123_RUNTIME_DIR")
    if env:
        return Path(env)
    if sys.platform == "win32" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / "mpod123" / "runtime"
    return Path.home() / ".local" / "share" / "mpod123" / "runtime"


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
DIR_FD = bool(_NOFOLLOW and _DIRECTORY) and os.open in os.supports_dir_fd
"""Whether files can be opened relative to a checked folder (POSIX); elsewhere they are read by path."""


def _check_private(st: os.stat_result, path: Path, folder: bool) -> None:
    if not hasattr(os, "getuid"):
        return  # Windows: the user's profile folder is private by its ACL
    fix = (f"set MPOD123_RUNTIME_DIR to a folder of your own, or remove {path} and start the backend again")
    if st.st_uid != os.getuid():
        raise LocalKeysError(f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}); {fix}")
    if stat.S_IMODE(st.st_mode) & 0o077:
        mode = stat.S_IMODE(st.st_mode)
        raise LocalKeysError(f"{path} is {oct(mode)}: others can read it; run `chmod {'700' if folder else '600'} "
                             f"{path}` (and make new keys if someone else may have read them)")


def open_private_dir(path: Path) -> int:
    """A file descriptor of ``path`` after checking that it is a real folder (not a symbolic link),
    this user's own and 0700; files are then opened relative to it, so the folder cannot be
    swapped between the check and the use. Where folders cannot be opened (Windows: the profile
    folder's ACL keeps it private) it checks for a link and returns -1: files are read by path."""
    if not DIR_FD:
        if os.path.islink(path):
            raise LocalKeysError(f"{path} is a symbolic link; remove it and start the backend again")
        return -1
    try:
        fd = os.open(path, os.O_RDONLY | _DIRECTORY | _NOFOLLOW)
    except OSError as exc:
        if os.path.islink(path):
            raise LocalKeysError(f"{path} is a symbolic link; remove it (rm {path}) and start the backend again, "
                                 "or set MPOD123_RUNTIME_DIR to a folder of your own") from None
        raise exc
    try:
        _check_private(os.fstat(fd), path, folder=True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_private_file(folder_fd: int, folder: Path, name: str, limit: int = 1 << 16) -> str:
    """A small file of the runtime folder, refused if it is a symbolic link, not this user's, or not 0600."""
    path = folder / name
    try:
        fd = os.open(name, os.O_RDONLY | _NOFOLLOW, dir_fd=folder_fd) if folder_fd >= 0 else os.open(path, os.O_RDONLY)
    except OSError as exc:
        if os.path.islink(path):
            raise LocalKeysError(f"{path} is a symbolic link; remove it and start the backend again") from None
        raise exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LocalKeysError(f"{path} is not a regular file; remove it and start the backend again")
        _check_private(st, path, folder=False)
        return os.read(fd, limit).decode("ascii", errors="replace")
    finally:
        os.close(fd)


def parse_key_text(text: str, where: str | Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) from a ZeroMQ certificate's text; an empty, short or mismatched key is an error."""
    found = {m.group(1): m.group(2) for m in re.finditer(r'^\s*(public|secret)-key\s*=\s*"([^"]*)"', text, re.M)}
    public, secret = found.get("public", ""), found.get("secret")
    what = "secret" if need_secret else "public"
    if len(public) != KEY_CHARS or need_secret and (secret is None or len(secret) != KEY_CHARS):
        raise LocalKeysError(f"{where} holds no valid CURVE {what} key (empty, short or damaged); remove it "
                             "and make keys again (a local backend makes its own at its next start)")
    return public.encode(), (secret.encode() if secret is not None and need_secret else None)


def read_local_keys(folder: Path | None = None) -> tuple[bytes, tuple[bytes, bytes]] | None:
    """(server public key, (client public, client secret)) made by this user's local backend, or None
    when none has run as this user; raises :class:`LocalKeysError` if they are not private."""
    folder = folder or runtime_dir()
    if not os.path.lexists(folder):
        return None
    fd = open_private_dir(folder)
    try:
        try:
            server = read_private_file(fd, folder, LOCAL_SERVER_KEY)
            client = read_private_file(fd, folder, LOCAL_CLIENT_SECRET)
        except FileNotFoundError:
            return None
    finally:
        if fd >= 0:
            os.close(fd)
    server_public, _ = parse_key_text(server, folder / LOCAL_SERVER_KEY, need_secret=False)
    client_public, client_secret = parse_key_text(client, folder / LOCAL_CLIENT_SECRET, need_secret=True)
    return server_public, (client_public, client_secret)
