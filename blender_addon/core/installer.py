"""The parent side of an install: starts, watches and cancels the child process that runs the plan."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from .commands import backend_environment, child_popen_options
from .install_run import PLAN, InstallPlan
from .managed_env import ManagedEnv

CHILD_CODE = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
              "runpy.run_module('core.install_run', run_name='__main__')")
"""The child runs :mod:`install_run` as ``core.install_run`` from the add-on's folder, so that its relative
imports (standard library only, no bpy) work in any Python, whatever the add-on's package is called."""

# ------------------------------------------------------------------ the parent side
@dataclass
class Status:
    state: str
    """idle, running, done, failed, cancelled"""
    step: str = ""
    fraction: float = 0.0
    error: str = ""

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")



class Installer:
    """Starts, watches and cancels one install (or repair) in a child process."""

    def __init__(self, plan: InstallPlan) -> None:
        self.plan = plan
        self.env = ManagedEnv(Path(plan.root))
        self.proc: subprocess.Popen | None = None
        self.cancelled = False
        self._final: Status | None = None

    def start(self) -> Installer:
        self.plan.validate()
        root = Path(self.plan.root)
        root.mkdir(parents=True, exist_ok=True)
        self.env.marker.unlink(missing_ok=True)
        self.env.status_file.unlink(missing_ok=True)
        with open(self.env.log, "a", encoding="utf-8") as log:  # every run's log is kept, the newest last
            log.write(f"\n==== MPOD123 backend {'repair' if self.plan.repair else 'install'}, "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        plan_path = root / PLAN
        plan_path.write_text(json.dumps(asdict(self.plan), indent=1))
        env = backend_environment()
        with open(root / "install-child.err", "w", encoding="utf-8") as err:
            self.proc = subprocess.Popen(
                [self.plan.python, "-c", CHILD_CODE, str(Path(__file__).resolve().parents[1]), "run", str(plan_path)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env, **child_popen_options(),
            )
        return self

    def poll(self) -> Status:
        if self._final is not None:
            return self._final
        data = {}
        try:
            data = json.loads(self.env.status_file.read_text())
        except (OSError, ValueError):
            pass
        status = Status(data.get("state", "running"), data.get("step", "starting"), float(data.get("fraction", 0.0)),
                        data.get("error", ""))
        code = self.proc.poll() if self.proc is not None else None
        if code is not None:
            if status.state == "running":  # died without a word: a crash, or killed from outside
                err = (Path(self.plan.root) / "install-child.err")
                tail = err.read_text(errors="replace")[-500:].strip() if err.is_file() else ""
                status = Status("failed", status.step, status.fraction,
                                f"the installer stopped with code {code}: {tail or 'see ' + str(self.env.log)}")
            if status.state == "done" and not self.env.usable():
                status = Status("failed", status.step, status.fraction, "the installer ended without a usable environment")
            self._final = status
        return status

    def wait(self, timeout_s: float | None = None, on_status: Callable[[Status], None] | None = None,
             interval_s: float = 0.25) -> Status:
        """Block until the install ends (scripts, background mode); on timeout it is cancelled."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            status = self.poll()
            if on_status:
                on_status(status)
            if status.finished:
                return status
            if deadline is not None and time.monotonic() > deadline:
                return self.cancel(reason=f"did not finish within {timeout_s:.0f} s")
            time.sleep(interval_s)

    def cancel(self, timeout_s: float = 5.0, reason: str = "cancelled") -> Status:
        """Stop the child and everything it started; the environment stays marked unusable."""
        if self.proc is None:
            return Status("cancelled", error=reason)
        if self.proc.poll() is None:
            self.cancelled = True
            _kill_group(self.proc, timeout_s)
        final = self.poll()
        if self.cancelled and final.state != "done":
            self.env.marker.unlink(missing_ok=True)
            final = Status("cancelled", final.step, final.fraction, reason)
            self._final = final
            with open(self.env.log, "a", encoding="utf-8") as log:
                log.write(f"== CANCELLED: {reason}\n")
            try:
                self.env.status_file.write_text(json.dumps({**asdict(final), "state": "cancelled"}))
            except OSError:
                pass
        return final


def _kill_group(proc: subprocess.Popen, timeout_s: float) -> None:
    if os.name == "nt":
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(proc.pid)], capture_output=True, check=False)
    else:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # pip and anything else left in the group
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout_s)


