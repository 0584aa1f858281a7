"""The managed backend environment without Blender: arguments, torch build detection, pip progress, versions.

The end-to-end install (a real torch, cancel, repair, a job) is in
tests/test_backend_install_e2e.py; here the pieces, each on real inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blender_addon.core import backend_env as be
from tests.addon_backend import group_alive

ECHO = "import json, sys; print(json.dumps(sys.argv[1:]))"


# ------------------------------------------------------------------ arguments
WINDOWS_DATA = r"C:\Users\Jane Doe\AppData\Roaming\Blender Foundation\Blender\4.2\extensions\.user\user_default\mpod123\backend"
WINDOWS_PYTHON = WINDOWS_DATA + r"\venv\Scripts\python.exe"


def test_the_managed_command_keeps_a_windows_path_with_spaces_and_backslashes_intact():
    cmd = be.serve_command(WINDOWS_PYTHON, "tcp://127.0.0.1:5555", WINDOWS_DATA, be.split_command("--tiny", windows=True))
    assert cmd == [WINDOWS_PYTHON, "-m", "mpod123", "serve", "--bind", "tcp://127.0.0.1:5555", "--data", WINDOWS_DATA,
                   "--tiny"]
    assert be.env_python(Path("venv"), windows=True).as_posix() == "venv/Scripts/python.exe"


def test_a_custom_windows_command_splits_without_a_shell_and_fills_in_after_splitting():
    template = r'"C:\Program Files\MPOD 123\python.exe" -m mpod123 serve --bind {address} --data {data} --sd D:\models\sd15'
    cmd = be.expand_command(template, {"address": "tcp://127.0.0.1:5555", "data": WINDOWS_DATA}, windows=True)
    assert cmd == [r"C:\Program Files\MPOD 123\python.exe", "-m", "mpod123", "serve", "--bind", "tcp://127.0.0.1:5555",
                   "--data", WINDOWS_DATA, "--sd", r"D:\models\sd15"]
    # {python} is the managed environment's interpreter
    assert be.expand_command("{python} -m mpod123 serve", {"python": WINDOWS_PYTHON}, windows=True)[0] == WINDOWS_PYTHON
    with pytest.raises(be.EnvError, match="unbalanced quote"):
        be.split_command('"C:\\no end', windows=True)
    with pytest.raises(be.EnvError, match="empty"):
        be.expand_command("   ", {}, windows=True)


def test_posix_splitting_follows_the_shell_and_a_real_child_receives_the_arguments_intact(tmp_path):
    data = tmp_path / "my data" / 'it\'s "here" \\ $HOME'
    template = f"'{sys.executable}' -c '{ECHO}' --data {{data}} a\\ b \"c d\" ''"
    cmd = be.expand_command(template, {"data": str(data)}, windows=False)
    assert cmd[0] == sys.executable and cmd[3:] == ["--data", str(data), "a b", "c d", ""]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30)
    assert json.loads(out.stdout) == ["--data", str(data), "a b", "c d", ""], "no shell ever saw the value"


def test_the_child_gets_its_own_process_group():
    assert be.child_popen_options(windows=True) == {"creationflags": 0x200}
    if hasattr(subprocess, "CREATE_NEW_PROCESS_GROUP"):  # pragma: no cover - Windows
        assert subprocess.CREATE_NEW_PROCESS_GROUP == be.CREATE_NEW_PROCESS_GROUP
    assert be.child_popen_options(windows=False) == {"start_new_session": True}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], **be.child_popen_options(windows=False))
    try:
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
    finally:
        proc.kill()
        proc.wait(10)


def test_the_backend_environment_drops_blenders_python_settings():
    env = be.backend_environment({"PYTHONPATH": "/blender/scripts", "PYTHONHOME": "/blender/python", "PATH": "/bin",
                                  "HF_HOME": "/cache"})
    assert env == {"PATH": "/bin", "HF_HOME": "/cache"}


# ------------------------------------------------------------------ torch build
def _machine(smi: str | None = None, names: str = "", files: tuple[str, ...] = (), rocminfo: bool = False):
    def run(cmd):
        if cmd == ["nvidia-smi"]:
            return smi
        if cmd[0] == "nvidia-smi":
            return names if smi else None
        if cmd == ["rocminfo"]:
            return "Agent 1" if rocminfo else None
        raise AssertionError(cmd)

    return run, (lambda path: path in files)


SMI = "| NVIDIA-SMI 550.54.14   Driver Version: 550.54.14   CUDA Version: 12.4 |"


CPU_INDEX = be.PYTORCH_INDEX + "/cpu"


@pytest.mark.parametrize("system, smi, files, expected", [
    ("Linux", SMI, (), ("cuda", "cu124", be.PYTORCH_INDEX + "/cu124")),
    ("Windows", SMI.replace("12.4", "12.9"), (), ("cuda", "cu129", be.PYTORCH_INDEX + "/cu129")),
    ("Linux", SMI.replace("12.4", "13.1"), (), ("cuda", "cu130", be.PYTORCH_INDEX + "/cu130")),
    ("Linux", SMI.replace("12.4", "11.4"), (), ("cpu", "cpu", CPU_INDEX)),  # the driver is too old: update it
    ("Linux", None, ("/dev/kfd", "/opt/rocm", "/opt/rocm/.info/version"), ("rocm", "rocm6.2", be.PYTORCH_INDEX + "/rocm6.2")),
    ("Linux", None, ("/dev/kfd", "/opt/rocm"), ("rocm", "rocm", "")),  # version unknown: no index can be named
    ("Linux", None, ("/opt/rocm",), ("cpu", "cpu", CPU_INDEX)),  # ROCm installed but no AMD GPU (/dev/kfd)
    ("Linux", None, (), ("cpu", "cpu", CPU_INDEX)),  # the machine: no GPU must not get the CUDA build
    ("Windows", None, ("/dev/kfd", "/opt/rocm"), ("cpu", "cpu", CPU_INDEX)),
])
def test_torch_build_detection_picks_the_matching_wheel_index(system, smi, files, expected):
    run, exists = _machine(smi, "NVIDIA GeForce RTX 4090, 24564 MiB", files)
    build = be.detect_torch_build(system, "x86_64", run, exists, read=lambda path: "6.2.4-120\n")
    assert (build.kind, build.variant, build.index_url) == expected
    if build.kind == "cuda":
        assert "RTX 4090" in build.detail and build.describe().startswith("NVIDIA CUDA (cu")


def test_the_chosen_index_reaches_pips_torch_command_and_the_artist_can_override_it(tmp_path):
    run, exists = _machine(None)
    build = be.detect_torch_build("Linux", "x86_64", run, exists)
    for override, index in (("", CPU_INDEX), ("  https://mirror.example/torch  ", "https://mirror.example/torch")):
        plan = be.InstallPlan(root=str(tmp_path), python=sys.executable, wheel="w.whl",
                              torch_index_url=be.choose_index(override, build))
        (step, torch_cmd), (_, backend_cmd) = be.pip_install_commands(plan, tmp_path / "py", tmp_path / "c.txt")[:2]
        assert step == "torch" and torch_cmd[torch_cmd.index("--index-url") + 1] == index
        assert "--index-url" not in backend_cmd, "only torch comes from PyTorch's index"
    assert be.choose_index("", be.detect_torch_build("Darwin", "arm64", run, exists)) == "", "macOS: pip's default"


def test_apple_silicon_is_mps_and_an_intel_mac_cpu():
    run, exists = _machine()
    assert be.detect_torch_build("Darwin", "arm64", run, exists).kind == "mps"
    assert be.detect_torch_build("Darwin", "x86_64", run, exists).kind == "cpu"


def test_this_machine_is_detected_as_cpu():
    if be.run_quiet(["nvidia-smi"]) is not None or os.path.exists("/dev/kfd"):
        pytest.skip("this machine has a GPU")
    build = be.detect_torch_build()
    assert (build.kind, build.variant) == ("cpu", "cpu")


# ------------------------------------------------------------------ pip output
PIP_LINES = """\
Looking in indexes: https://index.example/simple
Collecting torch==2.13.0
  Downloading torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl (2.4 GB)
Collecting filelock (from torch==2.13.0)
  Using cached filelock-3.16.1-py3-none-any.whl (16 kB)
Processing /mirror/sympy-1.14.0-py3-none-any.whl (from torch==2.13.0)
Requirement already satisfied: typing-extensions>=4.10.0 in ./venv/lib/python3.11/site-packages (from torch==2.13.0)
Installing collected packages: mpmath, sympy, filelock, networkx, jinja2, torch
Successfully installed filelock-3.16.1 jinja2-3.1.6 mpmath-1.3.0 networkx-3.6.1 sympy-1.14.0 torch-2.13.0
"""


def test_pip_raw_progress_gives_the_bytes_of_a_big_download():
    pip = be.PipProgress("torch")
    pip.feed("Collecting torch==2.13.0")
    pip.feed("  Downloading torch-2.13.0-cp311-cp311-win_amd64.whl (2.4 GB)")
    start = pip.fraction
    seen = []
    for done in (0, 600_000_000, 1_200_000_000, 2_400_000_000):
        assert pip.feed(f"Progress {done} of 2400000000")
        seen.append((pip.step, pip.fraction))
    assert seen[1][0] == "downloading torch: 0.6 / 2.4 GB" and seen[-1][0] == "downloading torch: 2.4 / 2.4 GB"
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[0] == start
    assert fractions[-1] - start > 0.8 * (0.8 - start), "a 2.4 GB download takes most of the bar"
    assert not pip.feed("Progress 10 of 0"), "an unknown size moves nothing"


def test_pip_progress_reads_steps_sizes_and_moves_only_forward():
    pip = be.PipProgress("torch")
    seen = []
    for line in PIP_LINES.splitlines():
        changed = pip.feed(line)
        seen.append((changed, pip.step, pip.fraction))
    steps = [s for _, s, _ in seen]
    assert steps[1] == "resolving torch==2.13.0"
    assert steps[2] == "downloading torch (2.4 GB)"
    assert steps[4] == "using cached filelock (16 kB)" and steps[5] == "using sympy"
    assert steps[7].startswith("installing 6 package(s): mpmath, sympy, filelock, networkx, ...")
    assert steps[8] == "installed" and seen[8][2] == 1.0
    assert seen[0][0] is False, "lines pip prints that mean nothing are ignored"
    fractions = [f for _, _, f in seen]
    assert fractions == sorted(fractions) and 0.0 < fractions[2] < fractions[5] <= 0.8 < fractions[7] < 1.0


# ------------------------------------------------------------------ versions and the marker
@pytest.mark.parametrize("older, newer", [("0.1.0", "0.1.1"), ("0.9.0", "0.10.0"), ("1.0.0rc1", "1.0.0"), ("1.0", "1.0.1")])
def test_versions_order(older, newer):
    assert be.version_key(older) < be.version_key(newer)


def test_upgrade_is_offered_when_the_addon_carries_a_newer_wheel(tmp_path):
    env = be.ManagedEnv(tmp_path)
    new = tmp_path / "addon" / be.WHEEL_DIR
    new.mkdir(parents=True)
    for v in ("0.1.0", "0.10.0", "0.9.0"):
        (new / f"mpod123-{v}-py3-none-any.whl").write_bytes(b"")
    wheel = be.bundled_wheel(tmp_path / "addon")
    assert wheel.name == "mpod123-0.10.0-py3-none-any.whl" and be.wheel_version(wheel) == "0.10.0"
    assert not env.usable() and not env.needs_upgrade(wheel), "nothing installed: nothing to upgrade"
    env.python.parent.mkdir(parents=True)
    env.python.write_text("")
    env.marker.write_text(json.dumps({"wheel_version": "0.9.0"}))
    assert env.usable() and env.needs_upgrade(wheel)
    env.marker.write_text(json.dumps({"wheel_version": "0.10.0"}))
    assert not env.needs_upgrade(wheel)
    env.marker.write_text("{half a file")
    assert not env.usable(), "a damaged marker is not usable"
    env.remove()
    assert not env.dir.exists() and not env.usable()
    with pytest.raises(be.EnvError):
        be.wheel_version("mpod123.zip")


# ------------------------------------------------------------------ a real install that fails
def test_a_failing_install_keeps_its_log_and_leaves_nothing_usable(tmp_path):
    """A requirement pip cannot satisfy (offline, nothing found): failed, with the log kept, never marked usable."""
    wheel = tmp_path / "mpod123-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"not used: torch fails first")
    plan = be.InstallPlan(root=str(tmp_path / "backend"), python=sys.executable, wheel=str(wheel),
                          torch_requirement="mpod123-no-such-package==1.0", pip_args=["--no-index", "--find-links", str(tmp_path)])
    t0 = time.monotonic()
    inst = be.Installer(plan).start()
    statuses = []
    final = inst.wait(timeout_s=180, on_status=statuses.append)
    assert final.state == "failed" and "pip could not install torch (ERROR: " in final.error, final
    assert str(inst.env.log) in final.error, "the message says where the log is"
    log = inst.env.log.read_text()
    assert "mpod123-no-such-package==1.0" in log and "No matching distribution" in log and "FAILED" in log
    assert not inst.env.usable() and not inst.env.marker.exists()
    assert inst.env.python.is_file(), "the environment was made; Repair reuses it"
    assert any(s.step == "creating the environment" for s in statuses)
    assert time.monotonic() - t0 < 120


def test_a_plan_with_a_missing_python_or_wheel_is_refused_before_anything_starts(tmp_path):
    plan = be.InstallPlan(root=str(tmp_path / "b"), python=str(tmp_path / "no-python"), wheel=str(tmp_path / "w.whl"))
    with pytest.raises(be.EnvError, match="Backend Python"):
        be.Installer(plan).start()
    plan.python = sys.executable
    with pytest.raises(be.EnvError, match="reinstall the extension zip"):
        be.Installer(plan).start()
    assert not (tmp_path / "b").exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process groups from /proc (Linux)")
def test_stop_leaves_nothing_of_the_backends_process_group(tmp_path):
    """A backend that ignores the polite stop is killed, and so is what it started: its workers die with it
    (PR_SET_PDEATHSIG) but not at once on a busy machine, and a worker without that would live on."""
    from blender_addon.core.local_backend import LocalBackend

    stubborn = ("import signal, subprocess, sys, time; signal.signal(signal.SIGINT, signal.SIG_IGN); signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); print('up', flush=True); "
                "time.sleep(120)")
    backend = LocalBackend()
    pid = backend.start([sys.executable, "-c", stubborn], tmp_path / "backend.log")
    log = tmp_path / "backend.log"
    deadline = time.monotonic() + 30
    while "up" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "up" in log.read_text() and group_alive(pid), "the backend and its worker run"
    backend.stop(timeout_s=0.5)
    assert not group_alive(pid), "a process of the stopped backend's group lives on"
    assert not backend.running()
