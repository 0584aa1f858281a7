"""The front door's request handlers: one method per request type, each returning its reply.

A mixin of :class:`backend.server.Server`: the socket thread decodes a request,
finds its owner, and calls the handler named by its ``msg_type``. Handlers
read and write the job store and the server's subscriptions; they never touch
the socket (the server sends the reply). Errors are raised as
:class:`~backend.protocol.ProtocolError` (or the store's errors) and become
``error`` replies.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from . import protocol
from .kinds import view_frames
from .kinds.prompt import check_submit
from .protocol import Message, ProtocolError
from .store import UnknownJob

SERVER_NAME = "mpod123-backend"


class RequestHandlers:
    """The handlers; the server supplies ``store``, ``cfg``, ``boot``, ``peers`` and ``_subs``."""

    def _handler_table(self) -> dict:
        return {
            "hello": self._hello, "ping": self._ping, "submit": self._submit, "status": self._status,
            "list": self._list, "cancel": self._cancel, "resume": self._resume,
            "result_info": self._result_info, "fetch_chunk": self._fetch_chunk,
        }

    def _may_follow(self, identity: bytes, owner: str, job_id: str | None) -> None:
        """Refuse a new follow past ``max_follows_per_owner`` (re-following a job this connection
        already follows only moves its place, and always passes)."""
        if job_id is not None and job_id in self._subs.get(identity, {}):
            return
        follows = sum(1 for subs in list(self._subs.values()) for sub in subs.values() if sub.owner == owner)
        if follows >= self.cfg.max_follows_per_owner:
            raise ProtocolError("TooManyFollowed", f"your connections follow {follows} jobs, the most one owner may",
                                "close the connections you no longer use: each follows its jobs until they end")

    def _subscribe(self, identity: bytes, job_id: str, sent: int, client_id: str, owner: str, replace: bool) -> None:
        subs = self._subs.setdefault(identity, {})
        if replace or job_id not in subs:
            subs[job_id] = self._sub_type(sent, client_id, owner)

    def _unexpected(self, identity: bytes, owner: str, msg: Message) -> Message:
        raise ProtocolError("UnexpectedMessage", f"{msg.msg_type} is a reply type; clients do not send it")

    def _hello(self, identity: bytes, owner: str, msg: Message) -> Message:
        content = {
            "server": SERVER_NAME, "versions": list(protocol.SUPPORTED_VERSIONS), "version": self._version,
            "max_image_bytes": self.cfg.max_image_bytes, "max_chunk_bytes": protocol.MAX_CHUNK_BYTES,
            "chunk_credit": self.cfg.chunk_credit,
            "boot": self.boot,
        }
        from mpod123.runtime.doctor import hello_summary  # "GPU: ..., models: ready | will download N GB" (cached, no torch)

        content["summary"] = hello_summary(self.cfg.info)
        return Message("hello_reply", {**self.cfg.info, **content}, session=msg.session)

    def _ping(self, identity: bytes, owner: str, msg: Message) -> Message:
        """Liveness: how many of this client's jobs are forwarded to it (fewer than it follows: it
        was dropped and subscribes again)."""
        return Message("pong", {"following": len(self._subs.get(identity, ()))}, session=msg.session)

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
        self._may_follow(identity, owner, existing.job_id if existing else None)
        if existing is None:
            queued = self.store.count(states=("queued", "running"))
            if queued >= self.cfg.max_queued_jobs:
                raise ProtocolError("QueueFull", f"{queued} jobs are waiting", "try again later")
            mine = self.store.count(owner=owner, states=("queued", "running"))
            if mine >= self.cfg.max_jobs_per_client:
                raise ProtocolError("TooManyJobs", f"you have {mine} unfinished jobs", "wait for some to finish")
        job, created = self.store.submit(msg.job_id, owner, msg.content["options"], image)
        self._subscribe(identity, job.job_id, 0, job.client_id, owner, replace=False)
        return Message("ack", {"state": job.state, "created": created, "last_seq": job.last_seq},
                       job_id=job.client_id, session=msg.session)

    def _job_content(self, job) -> dict:
        error = job.error if job.error is None or len(job.error) <= protocol.MAX_ERROR_CHARS \
            else job.error[:protocol.MAX_ERROR_CHARS] + " [...]"
        return {
            "state": job.state, "error": error, "attempts": job.attempts, "last_seq": job.last_seq,
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
        self._may_follow(identity, owner, job.job_id)
        self._subscribe(identity, job.job_id, int(msg.content["last_seq"]), job.client_id, owner, replace=True)
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
        unread = self.peers.heard(identity).unread
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
        return Message("chunk", {"offset": offset, "size": len(data), "nonce": nonce}, [data],
                       job_id=msg.job_id, session=msg.session)
