"""Helpers for the add-on tests: a real `mpod123 serve --tiny` process on loopback, and test images."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOB_TIMEOUT_S = 300.0  # generous: tiny jobs slow down a lot on a shared, loaded 2-core machine


ADDON = "blender_addon"


def raise_addon_error(exc):
    raise exc


@contextlib.contextmanager
def enabled_addon(user_dir: Path):
    """The add-on enabled in bpy's factory settings, keeping its user folder (results, previews, the
    managed environment) under ``user_dir`` as it does outside an extension; disabled afterwards."""
    import addon_utils
    import bpy

    saved_tmp = tempfile.tempdir
    tempfile.tempdir = str(user_dir)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    try:
        yield addon_utils.enable(ADDON, default_set=True, handle_error=raise_addon_error)
        addon_utils.disable(ADDON, default_set=True, handle_error=raise_addon_error)
    finally:
        tempfile.tempdir = saved_tmp


def group_alive(pgid: int) -> bool:
    """A live (not zombie) process in process group ``pgid``, read from /proc: killed grandchildren reparented
    to a PID 1 that does not reap them stay as zombies, which ``os.killpg(pgid, 0)`` would still find."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class ServeProcess:
    """`mpod123 serve --tiny` on a fixed loopback port and data folder; restartable, stopped by pid."""

    def __init__(self, data: Path, port: int | None = None, extra: tuple[str, ...] = ()) -> None:
        self.data = Path(data)
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "mpod123", "serve", "--tiny", "--data", str(self.data),
                "--bind", self.endpoint, *self.extra]

    def start(self, timeout_s: float = 30.0) -> ServeProcess:
        self.data.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        # output to a file: a worker writing into a pipe nobody reads can fail with a broken pipe
        log = open(self.data / f"serve-{self.starts}.log", "w")  # noqa: SIM115  handed to the child
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=ROOT, env=env)
        log.close()
        deadline = time.monotonic() + timeout_s
        while not port_open(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"mpod123 serve exited with {self.proc.returncode}: {self.log()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mpod123 serve did not listen within {timeout_s} s: {self.log()[-2000:]}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        path = self.data / f"serve-{self.starts}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def kill(self) -> None:
        """SIGKILL by pid (its workers die with it) and wait."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        time.sleep(0.3)

    def stop(self) -> None:
        """SIGTERM by pid (a clean stop, as a service manager asks), then SIGKILL after 10 s. Not SIGINT: a
        shell starts background jobs with SIGINT ignored, and a child inherits that, so a suite run from a
        background job waited the full 10 s at every stop."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def object_png(size: int = 96, colour=(220, 120, 40), accent=(40, 90, 200)) -> bytes:
    """A cut-out object with alpha (a disc with a square), which preprocessing accepts."""
    from PIL import Image, ImageDraw

    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.ellipse((size // 5, size // 5, size - size // 5, size - size // 5), fill=(*colour, 255))
    d.rectangle((size * 2 // 5, size // 3, size * 3 // 5, size // 2), fill=(*accent, 255))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()
