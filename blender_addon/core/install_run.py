"""The managed backend: a virtual environment with this project's wheel and a torch build for this machine.

Blender's own Python never loads torch. The extension zip carries this
project's pure-Python wheel as a plain file (``backend_wheel/``); Install
Backend makes a virtual environment next to the add-on's user data with a
given Python (Blender's own by default), installs a torch build matched to the
machine and then the wheel, checks that the result imports, and only then
writes the marker file that says "usable". Start Local then runs that
environment's ``python -m mpod123 serve`` as an argument list.

The install runs in a child process (this file, run as a script by the given
Python), so Blender stays responsive. The child runs pip in grandchildren,
reads pip's output line by line into the log and turns it into a status file
(step, fraction); the add-on polls that file. Cancel kills the child's whole
process group. Because the marker is written last, a cancelled, killed or
failed install never leaves an environment marked usable, and Repair (the same
install over the existing folder) mends it.

This module is standard library only and never imports bpy: tests drive it in
plain Python, and the installer runs it as ``core.install_run run PLAN.json`` (see installer.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .commands import split_command
from .errors import EnvError
from .managed_env import ManagedEnv
from .torch_build import detect_torch_build

PLAN = "install-plan.json"


# ------------------------------------------------------------------ pip progress
SIZE_UNITS = {"kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "bytes": 1.0}


@dataclass
class PipProgress:
    """Reads pip's output lines into a current step and a monotone fraction of one pip run.

    pip prints ``Collecting X``, ``Downloading X-1.0-...whl (2.4 GB)`` (or
    ``Using cached ...``), ``Installing collected packages: ...`` and
    ``Successfully installed ...``. Without a terminal it prints no byte
    progress, so the fraction moves per package: downloads take up to 80%
    (each one a share weighted by its size), installing the rest.
    """

    label: str = "packages"
    step: str = ""
    fraction: float = 0.0
    packages: int = 0
    bytes_seen: float = 0.0
    installing: bool = False
    downloading: str = ""
    _download_start: float = 0.0

    def feed(self, line: str) -> bool:
        """Take one line; True when the step or fraction changed."""
        line = line.strip()
        if m := re.match(r"Collecting (\S+)", line):
            self.packages += 1
            self.step = f"resolving {_short(m.group(1))}"
        elif m := re.match(r"Downloading (\S+) \(([\d.]+) (kB|KB|MB|GB|bytes)\)", line):
            size = float(m.group(2)) * SIZE_UNITS[m.group(3)]
            self.bytes_seen += size
            self.downloading = _dist_name(m.group(1))
            self.step = f"downloading {self.downloading} ({m.group(2)} {m.group(3)})"
        elif (m := re.match(r"Progress (\d+) of (\d+)$", line)) and self.downloading:
            # pip's --progress-bar raw: bytes of the current download, four times a second
            done, total = int(m.group(1)), int(m.group(2))
            if total <= 0:
                return False
            unit, scale = ("GB", 1e9) if total >= 1e9 else ("MB", 1e6)
            self.step = f"downloading {self.downloading}: {done / scale:.1f} / {total / scale:.1f} {unit}"
            start = self._download_start
            cap = start + (0.8 - start) * total / (total + 3e8)  # a big download gets most of the bar
            return self._set(start + (cap - start) * min(1.0, done / total))
        elif m := re.match(r"Using cached (\S+) \(([\d.]+) (kB|KB|MB|GB|bytes)\)", line):
            self.step = f"using cached {_dist_name(m.group(1))} ({m.group(2)} {m.group(3)})"
        elif m := re.match(r"Processing (\S+)", line):  # a local file (--find-links, a mirror folder, our wheel)
            self.packages += 1
            self.step = f"using {_dist_name(m.group(1))}"
        elif line.startswith("Installing collected packages:"):
            names = [n.strip() for n in line.split(":", 1)[1].split(",") if n.strip()]
            self.installing = True
            self.step = f"installing {len(names)} package(s): {', '.join(names[:4])}{', ...' if len(names) > 4 else ''}"
        elif line.startswith("Successfully installed") or line.startswith("Requirement already satisfied"):
            if line.startswith("Successfully installed"):
                self.step = "installed"
                return self._set(1.0)
            self.step = f"already installed: {_short(line.split(':', 1)[1].split()[0]) if ':' in line else ''}".strip()
        else:
            return False
        if self.installing:
            return self._set(max(self.fraction, 0.85))
        # each new package moves a share of the remaining way to 80%; a big download moves more
        weight = 1.0 + min(self.bytes_seen / 5e8, 4.0)
        changed = self._set(min(0.8, self.fraction + (0.8 - self.fraction) * min(0.6, 0.12 * weight)))
        self._download_start = self.fraction  # pip's raw byte progress of a download continues from here
        return changed

    def _set(self, value: float) -> bool:
        value = max(self.fraction, min(1.0, value))
        self.fraction = value
        return True


def _short(spec: str) -> str:
    return spec.split("/")[-1][:60]


def _dist_name(filename: str) -> str:
    name = filename.split("/")[-1]
    return name.split("-")[0] if name.endswith((".whl", ".tar.gz", ".zip")) else name[:60]


# ------------------------------------------------------------------ the plan
@dataclass
class InstallPlan:
    """Everything the child process needs, written as JSON beside the log."""

    root: str
    """The backend folder (the extension's user folder ``backend``)"""
    python: str
    """The Python the environment is made from (Blender's own by default)"""
    wheel: str
    """This project's wheel, from the extension zip"""
    torch_requirement: str = "torch"
    torch_index_url: str = ""
    """Empty: pip's default (its configured index); else passed as --index-url for torch only"""
    pip_args: list[str] = field(default_factory=list)
    """Extra pip arguments for every pip run (a studio's mirror, proxy, --find-links)"""
    repair: bool = False
    """Reinstall into the existing environment instead of making it afresh"""
    build: dict = field(default_factory=dict)
    """The detected TorchBuild, recorded in the marker"""

    def validate(self) -> None:
        if not Path(self.python).is_file():
            raise EnvError(f"the Python to build the environment with does not exist: {self.python}; pick another in "
                           "the preferences (Backend Python)")
        if not Path(self.wheel).is_file():
            raise EnvError(f"the backend wheel is missing from the add-on ({self.wheel}); reinstall the extension zip")
        if not self.torch_requirement.strip():
            raise EnvError("Torch Requirement is empty: use e.g. torch or torch==2.13.0")


STEPS = (("venv", 0.0, 0.05), ("torch", 0.05, 0.6), ("backend", 0.6, 0.95), ("verify", 0.95, 1.0))
"""Each step's share of the whole install's progress bar."""


def pip_install_commands(plan: InstallPlan, python: Path, constraints: Path, raw_progress: bool = False
                         ) -> list[tuple[str, list[str]]]:
    """The pip runs: torch first (with its own index if given), then the wheel with torch held where it is."""
    base = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    if raw_progress:
        base += ["--progress-bar", "raw"]
    torch_cmd = base + split_command(plan.torch_requirement, windows=False)
    if plan.torch_index_url.strip():
        torch_cmd += ["--index-url", plan.torch_index_url.strip()]
    torch_cmd += list(plan.pip_args)
    backend_cmd = base + [plan.wheel, "--constraint", str(constraints), *plan.pip_args]
    if plan.repair:
        backend_cmd.insert(len(base), "--force-reinstall")
        backend_cmd.insert(len(base), "--no-deps")
        return [("torch", torch_cmd), ("backend", backend_cmd),
                ("backend", base + [plan.wheel, "--constraint", str(constraints), *plan.pip_args])]
    return [("torch", torch_cmd), ("backend", backend_cmd)]


VERIFY_CODE = (
    "import json, sys, torch, zmq, mpod123, backend.server, mpod123.pipeline\n"
    "from importlib.metadata import version\n"
    "print('MPOD123-VERIFY ' + json.dumps({'python': sys.version.split()[0], 'torch': torch.__version__,\n"
    " 'cuda': torch.version.cuda, 'hip': getattr(torch.version, 'hip', None),\n"
    " 'wheel_version': version('mpod123')}))\n"
)


# ------------------------------------------------------------------ the child process
class _StatusWriter:
    def __init__(self, env: ManagedEnv, log) -> None:
        self.env, self.log = env, log
        self.status = {"state": "running", "step": "starting", "fraction": 0.0, "error": "", "pid": os.getpid(),
                       "started": time.time()}

    def write(self, **fields) -> None:
        self.status.update(fields, updated=time.time())
        tmp = self.env.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.status))
        os.replace(tmp, self.env.status_file)

    def say(self, text: str) -> None:
        self.log.write(f"== {time.strftime('%H:%M:%S')} {text}\n")
        self.log.flush()


def _run_logged(cmd: list[str], log, on_line: Callable[[str], None]) -> int:
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PIP_NO_COLOR": "1"}
    env.pop("PYTHONPATH", None)  # the environment must stand on its own
    env.pop("PYTHONHOME", None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, errors="replace", bufsize=1, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        log.flush()
        on_line(line)
    return proc.wait()


def run_plan(plan: InstallPlan) -> int:
    """The child's work: environment, torch, wheel, check, marker. Returns the exit code."""
    env = ManagedEnv(Path(plan.root))
    env.marker.unlink(missing_ok=True)  # from here on the environment is not usable until the end
    with open(env.log, "a", encoding="utf-8") as log:
        status = _StatusWriter(env, log)

        def fail(text: str) -> int:
            status.say("FAILED: " + text)
            status.write(state="failed", error=text)
            return 1

        try:
            plan.validate()
        except EnvError as exc:
            return fail(str(exc))
        status.say(f"install ({'repair' if plan.repair else 'fresh'}) into {env.dir} with {plan.python}; "
                   f"torch build: {plan.build.get('variant', '?')}")
        status.write(step="creating the environment", fraction=0.01)
        if not plan.repair or not env.python.is_file():
            cmd = [plan.python, "-m", "venv", *([] if plan.repair else ["--clear"]), str(env.dir)]
            if _run_logged(cmd, log, lambda line: None) != 0 or not env.python.is_file():
                return fail(f"could not create the virtual environment with {plan.python} (see {env.log})")
        status.write(step="updating pip in the environment", fraction=0.03)
        raw = _pip_has_raw_progress(env.python, plan, log)
        constraints = env.dir / "mpod123-constraints.txt"
        lo_hi = {name: (lo, hi) for name, lo, hi in STEPS}
        for name, cmd in pip_install_commands(plan, env.python, constraints, raw):
            lo, hi = lo_hi[name]
            label = "torch" if name == "torch" else "the MPOD123 backend"
            status.write(step=f"installing {label}", fraction=lo)
            pip = PipProgress(label)

            def on_line(line: str, pip=pip, lo=lo, hi=hi, label=label) -> None:
                if pip.feed(line):
                    status.write(step=f"{label}: {pip.step}", fraction=round(lo + (hi - lo) * pip.fraction, 4))

            if name == "backend" and not constraints.is_file():
                constraints.write_text(_torch_pin(env.python, log))
            errors: list[str] = []

            def on_any(line: str, on_line=on_line, errors=errors) -> None:
                if line.startswith("ERROR:"):
                    errors.append(line.strip())
                on_line(line)

            if _run_logged(cmd, log, on_any) != 0:
                said = f" ({errors[0][:300]})" if errors else ""
                return fail(f"pip could not install {label}{said}; the whole log: {env.log}")
        status.write(step="checking the environment", fraction=STEPS[-1][1])
        lines: list[str] = []
        if _run_logged([str(env.python), "-c", VERIFY_CODE], log, lines.append) != 0:
            return fail(f"the environment does not import the backend (see {env.log})")
        found = [ln for ln in lines if ln.startswith("MPOD123-VERIFY ")]
        if not found:
            return fail("the environment check printed nothing")
        info = json.loads(found[-1][len("MPOD123-VERIFY "):])
        info.update(build=plan.build, base_python=plan.python, wheel=Path(plan.wheel).name, installed=time.time())
        tmp = env.marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=1))
        os.replace(tmp, env.marker)  # the very last act: now it is usable
        status.say(f"usable: torch {info['torch']}, mpod123 {info['wheel_version']}")
        status.write(state="done", step="ready", fraction=1.0)
        return 0


def _pip_has_raw_progress(python: Path, plan: InstallPlan, log) -> bool:
    """Whether the environment's pip reports download bytes (``--progress-bar raw``, pip 24.1+).

    An older pip (the one a Python ships) is updated first; if that fails (a
    mirror without pip, say) the install goes on with per-package progress.
    """
    def has_raw() -> bool:
        out: list[str] = []
        _run_logged([str(python), "-m", "pip", "install", "--help"], _Quiet(log), out.append)
        text = " ".join(" ".join(out).split())  # the help wraps its lines
        return re.search(r"\[(?:auto, )?on, off, raw\]", text) is not None

    if has_raw():
        return True
    _run_logged([str(python), "-m", "pip", "install", "--upgrade", "--disable-pip-version-check", "--no-input", "pip",
                 *plan.pip_args], log, lambda line: None)
    return has_raw()


class _Quiet:
    """A log that records only the command, not its output (pip's help text)."""

    def __init__(self, log) -> None:
        self.log = log

    def write(self, text: str) -> None:
        if text.startswith("$ "):
            self.log.write(text)

    def flush(self) -> None:
        self.log.flush()


def _torch_pin(python: Path, log) -> str:
    out: list[str] = []
    _run_logged([str(python), "-c", "from importlib.metadata import version; print('TORCH ' + version('torch'))"], log,
                out.append)
    pins = [ln.split()[1] for ln in out if ln.startswith("TORCH ")]
    return f"torch=={pins[-1]}\n" if pins else ""



def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "run":
        plan = InstallPlan(**json.loads(Path(argv[1]).read_text()))
        return run_plan(plan)
    if argv == ["detect"]:
        print(json.dumps(asdict(detect_torch_build())))
        return 0
    print("usage: install_run.py run PLAN.json | detect", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
