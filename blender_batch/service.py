"""The backend a batch talks to: an embedded ``mpod123 serve`` on loopback, or a remote one with keys.

The embedded backend is a child process listening on 127.0.0.1 on a port
the system picks (``tcp://127.0.0.1:0``; the chosen endpoint is read back
from the line the server prints). Its job database lives in the assets
folder, so a rerun finds the jobs of a killed run there: the server re-queues
the interrupted ones and the batch reattaches to them. On Linux the child
is told to die with the batch (``PR_SET_PDEATHSIG``), so a SIGKILLed batch
never leaves a backend behind that would race the next one on the same
database; its worker processes die with it in turn. A normal stop sends
SIGTERM (the server stops its executor and socket cleanly, as for a service
manager), then SIGKILL after a grace period, always by the child's own pid.
Not SIGINT: a batch started from a shell's background job (``nohup ... &``)
passes SIGINT on ignored, and every stop waited out the grace period.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from backend.client import Client

READY = re.compile(r"mpod123 backend on (tcp://\S+) ")


class ServiceError(RuntimeError):
    """The backend could not be started or reached; the message says why."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent is already gone
        os._exit(1)


@dataclass
class EmbeddedBackend:
    proc: subprocess.Popen
    endpoint: str
    log: Path

    @classmethod
    def start(cls, data_dir: Path, *, tiny: bool = False, workers: int = 1, job: str | None = None,
              timeout_s: float = 120.0) -> EmbeddedBackend:
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        log = data_dir / "serve.log"
        cmd = [sys.executable, "-m", "mpod123", "serve", "--bind", "tcp://127.0.0.1:0", "--data", str(data_dir),
               "--workers", str(max(1, workers))]
        if tiny:
            cmd.append("--tiny")
        if job:
            cmd += ["--job", job]
        start_at = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as out:  # a file, not a pipe: nobody would read a pipe and it would fill up
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                # started before this process makes any thread of its own (no zmq context or bar yet)
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
            )
        deadline = time.monotonic() + timeout_s
        while True:
            with open(log, "rb") as f:
                f.seek(start_at)
                text = f.read().decode("utf-8", "replace")
            match = READY.search(text)
            if match:
                return cls(proc, match.group(1), log)
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
                tail = "\n".join(text.strip().splitlines()[-15:])
                raise ServiceError(f"the embedded backend did not start (exit {proc.returncode}); its log {log}:\n{tail}")
            time.sleep(0.1)

    def stop(self, grace_s: float = 15.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def make_client(endpoint: str, session: str, timeout_s: float, server_key: str | None = None,
                client_key: str | None = None) -> Client:
    """A client for ``endpoint``; with key files, CURVE-encrypted and authenticated."""
    if server_key:
        from backend.security import load_client_keys, load_public_key

        try:
            return Client(endpoint, session, timeout_s, load_public_key(server_key), load_client_keys(client_key))
        except (OSError, ValueError, RuntimeError) as exc:
            raise ServiceError(f"cannot load the CURVE keys ({server_key}, {client_key}): {exc}") from None
    return Client(endpoint, session, timeout_s)
