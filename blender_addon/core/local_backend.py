"""The local backend process the add-on started: start, watch, restart after a crash, stop. No bpy.

One object per add-on session (:class:`LocalBackend`). It remembers the command it was started with, so
that when the process dies without being asked to (killed, crashed), the session can start it again with
the same command and the jobs continue (:meth:`LocalBackend.crashed`, :meth:`LocalBackend.restart`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from .commands import backend_environment, child_popen_options
from .errors import AddonError

MAX_RESTARTS = 3
"""Restarts after a crash before the add-on gives up and says so (a backend that dies at once each time)."""


def end_group(pgid: int, wait_s: float = 2.0) -> None:
    """Kill what is left of process group ``pgid`` (POSIX) and wait, at most ``wait_s``, until it is gone: a
    killed backend's workers die on their own (PR_SET_PDEATHSIG), but not at once on a busy machine."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        if time.monotonic() >= deadline:
            return
        time.sleep(0.05)


class LocalBackend:
    """A backend process started by the add-on, its log file, and how often it was restarted."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.command: list[str] = []
        self.log_path: Path | None = None
        self.restarts = 0
        self._log = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def crashed(self) -> bool:
        """Started by the add-on and gone without being stopped (killed, crashed, exited on its own)."""
        return self.proc is not None and self.proc.poll() is not None

    def start(self, command: list[str], log_path: Path) -> int:
        """Start ``command`` (an argument list, never a shell string), its output into ``log_path``; returns the pid."""
        if self.running():
            return self.proc.pid
        self.close_log()
        self.command, self.log_path = list(command), Path(log_path)
        self._log = open(self.log_path, "a")  # noqa: SIM115  stays open while the backend runs
        try:
            self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=backend_environment(), **child_popen_options())
        except OSError as exc:
            self.close_log()
            self.proc = None
            raise AddonError(
                f"cannot start the local backend ({exc}): click Install Backend in the add-on preferences (or Repair "
                f"it), or clear Local Command, or give the full path of your own mpod123 there "
                f"(e.g. /path/to/venv/bin/mpod123 serve --bind {{address}} --data {{data}})"
            ) from None
        return self.proc.pid

    def restart(self) -> int:
        """Start the same command again after a crash; raises AddonError after :data:`MAX_RESTARTS`."""
        code = self.proc.returncode if self.proc is not None else None
        if self.restarts >= MAX_RESTARTS:
            self.proc = None
            raise AddonError(f"the local backend stopped (exit code {code}) {self.restarts + 1} times; not starting it "
                             f"again. Its log: {self.log_tail()}")
        self.restarts += 1
        self.proc = None
        if self.log_path is not None:
            with open(self.log_path, "a") as log:
                log.write(f"\n==== MPOD123: the backend stopped (exit code {code}); started again\n")
        return self.start(self.command, self.log_path or Path(os.devnull))

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop it (SIGTERM, serve's clean stop, then kill after ``timeout_s``) and whatever of its process group
        is left (its job workers, when it had to be killed); no restart follows. Not SIGINT: a Blender started
        from a shell's background job passes SIGINT on ignored, and the backend would only be killed."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM if os.name != "nt" else signal.CTRL_BREAK_EVENT)
                proc.wait(timeout_s)
            except (subprocess.TimeoutExpired, OSError, ValueError):
                proc.kill()
                proc.wait(5)
        if proc is not None and os.name != "nt":
            end_group(proc.pid)
        self.close_log()
        self.restarts = 0

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, chars: int = 600) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-chars:].strip() or "(empty)"
        except (OSError, TypeError):
            return "(no log)"
