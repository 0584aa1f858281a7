"""The client's errors and its chunked result download, apart from :mod:`.client` so that each stays short
(both are vendored into the add-on byte for byte).

The download asks for ``in_flight`` chunks at a time (within the server's chunk credit), acknowledges each
chunk's nonce with the next request, writes chunks in offset order to ``dest.part`` while hashing them, and
resumes a partial ``.part``; a result whose sha256 differs is deleted and reported."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

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


class ResultDownload:
    """:meth:`fetch` for :class:`~backend.client.Client` (which provides the socket, ``request``, ``_send``,
    ``_recv``, ``_timeout``, ``_acks``, ``session``, ``timeout_s`` and ``pending_events``)."""

    def fetch(self, job_id: str, dest: str | Path, chunk: int = DEFAULT_CHUNK, in_flight: int = 4) -> Path:
        """Download the result to ``dest`` in chunks, resuming a partial ``dest.part``; checks sha256.

        The hash is computed as the chunks are written (a resumed ``.part`` is read once first),
        so the file is never read back."""
        info = self.request("result_info", job_id=job_id).content
        size, digest = info["size"], info["sha256"]
        dest = Path(dest)
        part = dest.with_name(dest.name + ".part")
        offset = part.stat().st_size if part.exists() else 0
        if offset > size:
            part.unlink()
            offset = 0
        h = hashlib.sha256()
        if offset:
            with open(part, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        with open(part, "ab") as f:
            next_offset = offset
            outstanding = 0
            received: dict[int, bytes] = {}
            sent: set[str] = set()
            in_flight = max(1, min(in_flight, protocol.CHUNK_CREDIT))
            while offset < size:
                while outstanding < in_flight and next_offset < size:
                    req = Message("fetch_chunk", {"offset": next_offset, "length": min(chunk, size - next_offset),
                                                  "acks": self._acks}, job_id=job_id, session=self.session)
                    sent.add(self._send(req))
                    self._acks = []
                    next_offset += min(chunk, size - next_offset)
                    outstanding += 1
                msg = self._recv(self.timeout_s)
                if msg is None:
                    raise self._timeout("fetch_chunk")
                if msg.msg_type == "event":
                    self.pending_events.append(msg)
                    continue
                if not self._is_chunk_reply(msg, sent):
                    continue  # a late reply to an earlier request
                _raise_if_error(msg)
                outstanding -= 1
                if isinstance(msg.content.get("nonce"), str):
                    self._acks.append(msg.content["nonce"])  # sent with the next request (this fetch's or the next's)
                received[msg.content["offset"]] = msg.buffers[0]
                while offset in received:
                    data = received.pop(offset)
                    f.write(data)
                    h.update(data)
                    offset += len(data)
        if h.hexdigest() != digest:
            part.unlink()
            raise BackendError("ChecksumMismatch", f"the download of {job_id} does not match its sha256", "fetch again")
        os.replace(part, dest)
        return dest

    @staticmethod
    def _is_chunk_reply(msg: Message, sent: set[str]) -> bool:
        parent = msg.extra_header.get("parent_msg_id")
        if parent is None and msg.msg_type == "error":
            parent = msg.content.get("parent_msg_id")
        if parent is None:
            return True
        if parent in sent:
            sent.discard(parent)
            return True
        return False
