"""A backend in the test process (store, server, executor) and a minimal DEALER client for it."""

from __future__ import annotations

import hashlib
import time
import uuid

import zmq

from backend import protocol
from backend.store import JobStore
from backend.protocol import Message
from backend.server import Server, ServerConfig
from backend.workers import ExecutorConfig, LocalExecutor


class Client:
    """A minimal DEALER client for the tests (the add-on's client comes with the add-on)."""

    def __init__(self, endpoint: str, session: str = "alice") -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.session = session
        self.events: list[Message] = []

    def close(self) -> None:
        self.sock.close(0)

    def send(self, msg_type, content=None, buffers=(), job_id=None) -> None:
        msg = Message(msg_type, content or {}, list(buffers), job_id=job_id, session=self.session)
        self.sock.send_multipart(protocol.encode(msg))

    def recv(self, timeout: float = 10.0) -> Message:
        if not self.sock.poll(int(timeout * 1000)):
            raise TimeoutError("no reply from the server")
        return protocol.decode(self.sock.recv_multipart())

    def request(self, msg_type, content=None, buffers=(), job_id=None, timeout=10.0) -> Message:
        self.send(msg_type, content, buffers, job_id)
        deadline = time.time() + timeout
        while True:
            msg = self.recv(max(0.01, deadline - time.time()))
            if msg.msg_type == "event":
                self.events.append(msg)
                continue
            return msg

    def wait_for(self, kind: str, job_id: str, timeout: float = 30.0) -> Message:
        deadline = time.time() + timeout
        for msg in self.events:
            if msg.job_id == job_id and msg.content["kind"] == kind:
                return msg
        while time.time() < deadline:
            msg = self.recv(max(0.01, deadline - time.time()))
            if msg.msg_type == "event":
                self.events.append(msg)
                if msg.job_id == job_id and msg.content["kind"] == kind:
                    return msg
        raise TimeoutError(f"no {kind} event for {job_id}")

    def download(self, job_id: str, chunk: int = 1 << 20) -> bytes:
        info = self.request("result_info", job_id=job_id)
        assert info.msg_type == "result_info_reply", info.content
        data = b""
        acks: list[str] = []
        while len(data) < info.content["size"]:
            reply = self.request("fetch_chunk", {"offset": len(data), "length": chunk, "acks": acks}, job_id=job_id)
            assert reply.msg_type == "chunk" and reply.content["offset"] == len(data)
            acks = [reply.content["nonce"]]
            data += reply.buffers[0]
        assert hashlib.sha256(data).hexdigest() == info.content["sha256"]
        return data


class Backend:
    def __init__(self, tmp_path, executor="local", **executor_kw):
        self.tmp = tmp_path
        self.kind = executor
        self.store = JobStore(tmp_path / "jobs.sqlite", max_attempts=executor_kw.pop("max_attempts", 2),
                              busy_timeout_s=executor_kw.pop("busy_timeout_s", 30.0))
        cfg = ExecutorConfig(**executor_kw)
        if executor == "ray":
            from backend.ray_executor import RayConfig, RayExecutor

            self.executor = RayExecutor(self.store, tmp_path / "data", cfg, RayConfig(num_gpus=0, namespace="mpod123-tests"))
        else:
            self.executor = LocalExecutor(self.store, tmp_path / "data", cfg)
        self.recovered = self.executor.recover()
        self.server = Server(self.store, ServerConfig(bind="tcp://127.0.0.1:0"))
        self.endpoint = self.server.start()
        self.executor.start()

    def sid(self, client_id: str, session: str = "alice") -> str:
        """The server's id of ``session``'s job ``client_id`` (what the store and the executor use)."""
        return self.store.get_owned(client_id, f"session:{session}").job_id

    def stop(self, kill=True):
        self.executor.stop(kill=kill)
        self.server.stop()
        self.store.close()


def new_job_id() -> str:
    return uuid.uuid4().hex


def submit_job(client, options, job_id=None):
    job_id = job_id or new_job_id()
    reply = client.request("submit", {"options": options}, [b"\x89PNG fake image"], job_id=job_id)
    assert reply.msg_type == "ack", reply.content
    return job_id, reply


