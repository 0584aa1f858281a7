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
plain Python, and it runs as ``python backend_env.py run PLAN.json``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

ENV_DIR = "venv"
MARKER = "mpod123-env.json"
"""Written inside the environment as the install's very last act: its presence means usable."""
LOG = "install.log"
STATUS = "install-status.json"
PLAN = "install-plan.json"
WHEEL_DIR = "backend_wheel"
"""The folder of the extension that holds this project's wheel."""
CREATE_NEW_PROCESS_GROUP = 0x00000200
"""Windows' creation flag (``subprocess.CREATE_NEW_PROCESS_GROUP``, spelled out so any OS can build the options)."""
CUDA_VARIANTS = ((11, 8), (12, 1), (12, 4), (12, 6), (12, 8), (12, 9), (13, 0))
"""CUDA versions PyTorch publishes builds for; the newest one the driver supports is chosen."""


class EnvError(RuntimeError):
    """Something about the managed environment the user has to fix; the message says what."""


# ------------------------------------------------------------------ folders
@dataclass(frozen=True)
class ManagedEnv:
    """The managed backend's folder: ``venv/`` (the environment), the install log and status."""

    root: Path

    @property
    def dir(self) -> Path:
        return Path(self.root) / ENV_DIR

    @property
    def python(self) -> Path:
        return env_python(self.dir)

    @property
    def marker(self) -> Path:
        return self.dir / MARKER

    @property
    def log(self) -> Path:
        return Path(self.root) / LOG

    @property
    def status_file(self) -> Path:
        return Path(self.root) / STATUS

    def info(self) -> dict | None:
        """The marker's content when the environment is usable, else None."""
        try:
            data = json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and self.python.is_file() else None

    def usable(self) -> bool:
        return self.info() is not None

    def needs_upgrade(self, bundled_wheel: Path | None) -> bool:
        """A usable environment whose installed wheel is older than the one the add-on carries."""
        info = self.info()
        if info is None or bundled_wheel is None:
            return False
        return version_key(wheel_version(bundled_wheel)) > version_key(str(info.get("wheel_version", "0")))

    def remove(self) -> None:
        """Delete the environment (the marker first, so a half-deleted folder is never "usable")."""
        self.marker.unlink(missing_ok=True)
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.status_file.unlink(missing_ok=True)


def env_python(env_dir: Path, windows: bool | None = None) -> Path:
    windows = os.name == "nt" if windows is None else windows
    return Path(env_dir) / ("Scripts/python.exe" if windows else "bin/python")


# ------------------------------------------------------------------ wheel versions
def bundled_wheel(addon_dir: Path) -> Path | None:
    """The newest mpod123 wheel in the extension's ``backend_wheel/`` folder."""
    wheels = sorted(Path(addon_dir, WHEEL_DIR).glob("mpod123-*.whl"), key=lambda p: version_key(wheel_version(p)))
    return wheels[-1] if wheels else None


def wheel_version(path: Path | str) -> str:
    """``mpod123-0.1.0-py3-none-any.whl`` -> ``0.1.0``."""
    parts = Path(path).name.split("-")
    if len(parts) < 5 or not parts[-1].endswith(".whl"):
        raise EnvError(f"{Path(path).name} is not a wheel file name")
    return parts[1]


def version_key(version: str) -> tuple:
    """Orders release versions (1.10 > 1.9; a pre-release sorts before its release)."""
    key = []
    for part in re.split(r"[.+]", version):
        m = re.match(r"(\d*)(.*)", part)
        num, rest = m.group(1), m.group(2)
        key.append((int(num) if num else -1, 0 if not rest else -1, rest))
    return tuple(key)


# ------------------------------------------------------------------ torch build
@dataclass
class TorchBuild:
    """Which torch build suits this machine, found before anything is installed."""

    kind: str
    """cuda, rocm, mps or cpu"""
    variant: str
    """PyTorch's name for the build: cu128, rocm6.2, mps, cpu"""
    detail: str
    """What was found, for the status line"""
    index_hint: str = ""
    """Non-empty when pip's default index does not carry this build: what to put in Torch Index URL"""

    def describe(self) -> str:
        names = {"cuda": "NVIDIA CUDA", "rocm": "AMD ROCm", "mps": "Apple Metal (MPS)", "cpu": "CPU"}
        return f"{names.get(self.kind, self.kind)} ({self.variant}): {self.detail}"


def _run_quiet(cmd: list[str], timeout: float = 10.0) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def cuda_variant(cuda: tuple[int, int]) -> str | None:
    """The newest published CUDA build the driver can run (driver reports ``CUDA Version: 12.4``)."""
    fits = [v for v in CUDA_VARIANTS if v <= cuda]
    return f"cu{fits[-1][0]}{fits[-1][1]}" if fits else None


def detect_torch_build(
    system: str | None = None,
    machine: str | None = None,
    run: Callable[[list[str]], str | None] = _run_quiet,
    exists: Callable[[str], bool] = os.path.exists,
) -> TorchBuild:
    """NVIDIA (nvidia-smi's driver CUDA version), AMD on Linux (ROCm), Apple Silicon (MPS) or CPU.

    ``run`` and ``exists`` are the only ways this looks at the machine, so the
    decision is testable for any machine.
    """
    system = system or platform.system()
    machine = (machine or platform.machine()).lower()
    if system == "Darwin":
        if machine in ("arm64", "aarch64"):
            return TorchBuild("mps", "mps", "Apple Silicon")
        return TorchBuild("cpu", "cpu", "Intel Mac (no GPU build of torch)")
    smi = run(["nvidia-smi"])
    if smi:
        m = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", smi)
        names = run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"]) or ""
        gpu = names.strip().splitlines()[0].strip() if names.strip() else "NVIDIA GPU"
        if m:
            cuda = (int(m.group(1)), int(m.group(2)))
            variant = cuda_variant(cuda)
            if variant:
                hint = ""
                if system == "Windows":  # pip's default index has CPU-only torch for Windows
                    hint = f"PyTorch's wheel index for {variant} (its URL ends in /whl/{variant})"
                return TorchBuild("cuda", variant, f"{gpu}, driver supports CUDA {cuda[0]}.{cuda[1]}", hint)
            return TorchBuild("cpu", "cpu", f"{gpu}: the driver (CUDA {cuda[0]}.{cuda[1]}) is too old; update it for GPU use")
    if system == "Linux" and (exists("/dev/kfd") and (exists("/opt/rocm") or run(["rocminfo"]))):
        version = ""
        for path in ("/opt/rocm/.info/version",):
            if exists(path):
                try:
                    version = Path(path).read_text().strip()
                except OSError:
                    pass
        mm = re.match(r"(\d+)\.(\d+)", version)
        variant = f"rocm{mm.group(1)}.{mm.group(2)}" if mm else "rocm"
        return TorchBuild("rocm", variant, f"AMD GPU, ROCm {version or 'version unknown'}",
                          f"PyTorch's wheel index for {variant} (its URL ends in /whl/{variant})")
    hint = "PyTorch's CPU wheel index (its URL ends in /whl/cpu) for a smaller download" if system == "Linux" else ""
    return TorchBuild("cpu", "cpu", "no NVIDIA or AMD GPU found", hint)


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


def child_popen_options(windows: bool | None = None) -> dict:
    """A child in its own process group (POSIX session / Windows group), so it can be signalled as a whole."""
    windows = os.name == "nt" if windows is None else windows
    return {"creationflags": CREATE_NEW_PROCESS_GROUP} if windows else {"start_new_session": True}


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
                [self.plan.python, str(Path(__file__).resolve()), "run", str(plan_path)],
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


# ------------------------------------------------------------------ starting the backend
def split_command(text: str, windows: bool | None = None) -> list[str]:
    """Split a command line into arguments without a shell.

    Double quotes group; on Windows a backslash is an ordinary character (so
    ``C:\\Users\\Jane Doe\\x.exe`` in quotes stays intact), elsewhere it escapes
    the next character as in a POSIX shell. Single quotes group on POSIX only.
    """
    windows = os.name == "nt" if windows is None else windows
    args: list[str] = []
    cur: list[str] = []
    have = False
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == quote:
                quote = ""
            elif c == "\\" and not windows and quote == '"' and i + 1 < len(text) and text[i + 1] in '"\\$`':
                i += 1
                cur.append(text[i])
            else:
                cur.append(c)
        elif c in "\"'" and (c == '"' or not windows):
            quote, have = c, True
        elif c == "\\" and not windows and i + 1 < len(text):
            i += 1
            cur.append(text[i])
            have = True
        elif c.isspace():
            if have or cur:
                args.append("".join(cur))
            cur, have = [], False
        else:
            cur.append(c)
            have = True
        i += 1
    if quote:
        raise EnvError(f"unbalanced quote in the command: {text}")
    if have or cur:
        args.append("".join(cur))
    return args


def expand_command(template: str, values: dict[str, str], windows: bool | None = None) -> list[str]:
    """A custom command as an argument list: split first, then fill ``{address}``, ``{data}``, ``{python}``.

    Filling after splitting means a value with spaces, quotes or backslashes
    stays one argument, exactly as given.
    """
    args = split_command(template, windows)
    if not args:
        raise EnvError("the local command is empty")
    out = []
    for arg in args:
        for key, value in values.items():
            arg = arg.replace("{" + key + "}", value)
        out.append(arg)
    return out


def serve_command(python: Path | str, address: str, data: Path | str, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The managed environment's backend: ``python -m mpod123 serve --bind ADDRESS --data DATA ...``."""
    return [str(python), "-m", "mpod123", "serve", "--bind", address, "--data", str(data), *extra]


def backend_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a backend started from Blender: Blender's own Python settings removed."""
    env = dict(os.environ if base is None else base)
    for key in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONNOUSERSITE"):
        env.pop(key, None)
    return env


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "run":
        plan = InstallPlan(**json.loads(Path(argv[1]).read_text()))
        return run_plan(plan)
    if argv == ["detect"]:
        print(json.dumps(asdict(detect_torch_build())))
        return 0
    print("usage: backend_env.py run PLAN.json | detect", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
