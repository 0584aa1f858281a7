"""The managed-backend operators in the real bpy module, quickly (the full install is in test_backend_install_e2e)."""

from __future__ import annotations

import json
import sys
import time

import pytest

bpy = pytest.importorskip("bpy")

from tests.addon_backend import enabled_addon  # noqa: E402


@pytest.fixture(scope="module")
def addon(tmp_path_factory):
    with enabled_addon(tmp_path_factory.mktemp("addon-user")):
        from blender_addon.session import backend

        yield backend


def _ops():
    return sys.modules["blender_addon.ui.backend_ops"]


@pytest.fixture
def prefs(addon):
    from blender_addon.blender.preferences import prefs as get_prefs

    p = get_prefs(bpy.context)
    saved = (p.local_command, p.use_local_backend, p.address, p.serve_args)
    yield p
    p.local_command, p.use_local_backend, p.address, p.serve_args = saved
    bpy.context.preferences.system.use_online_access = False


def test_with_online_access_off_install_says_what_to_click_and_creates_nothing(addon, prefs):
    root = addon.backend_root(create=False)
    assert not root.exists()
    bpy.context.preferences.system.use_online_access = False
    assert bpy.app.online_access is False
    for op in (bpy.ops.mpod123.install_backend, bpy.ops.mpod123.repair_backend):
        with pytest.raises(RuntimeError, match=r"Allow Online Access is off: turn it on in Edit > Preferences > System > Network"):
            op(wait=True)
    assert not root.exists(), "nothing was created"
    assert addon.status_line() == "Backend not installed: click Install Backend in the add-on preferences"


def test_generate_without_an_installed_backend_says_to_install_it(addon, prefs):
    from blender_addon import session
    from tests.addon_backend import free_port

    prefs.address = f"tcp://127.0.0.1:{free_port()}"
    prefs.use_local_backend = True
    prefs.local_command = ""
    try:
        with pytest.raises(RuntimeError, match=r"cannot start the local backend: the backend is not installed: "
                                               r"Edit > Preferences > Add-ons > MPOD123 > Install Backend"):
            bpy.ops.mpod123.connect()
        assert not session.local_running()
    finally:
        session.disconnect()


def test_start_local_runs_the_managed_python_as_an_argument_list(addon, prefs, tmp_path):
    """A usable environment (its marker and interpreter): the command is its Python, arguments intact."""
    from blender_addon import session

    env = addon.managed_env()
    try:
        env.python.parent.mkdir(parents=True, exist_ok=True)
        env.python.symlink_to(sys.executable)
        env.marker.write_text(json.dumps({"torch": "2.13.0+cpu", "wheel_version": "0.1.0", "build": {"variant": "cpu"}}))
        prefs.local_command = ""
        prefs.address = "tcp://127.0.0.1:5999"
        prefs.serve_args = '--tiny --sd "/models/my sd"'
        data = tmp_path / "data with spaces" / "it's"
        prefs.local_data = str(data)
        cmd = session.local_command()
        assert cmd == [str(env.python), "-m", "mpod123", "serve", "--bind", "tcp://127.0.0.1:5999", "--data", str(data),
                       "--tiny", "--sd", "/models/my sd"]
        assert addon.status_line() == "Backend ready: torch 2.13.0+cpu (cpu), mpod123 0.1.0"
        # an older default command from saved preferences means the managed backend too
        prefs.local_command = "mpod123 serve --bind {address} --data {data}"
        assert session.local_command()[0] == str(env.python)
        # an expert's command, with the managed Python as {python}
        prefs.local_command = "{python} -m mpod123 serve --bind {address} --data {data} --workers 2"
        assert session.local_command() == [str(env.python), "-m", "mpod123", "serve", "--bind", "tcp://127.0.0.1:5999",
                                          "--data", str(data), "--workers", "2"]
        assert bpy.ops.mpod123.remove_backend() == {"FINISHED"}
        assert not env.dir.exists() and addon.status_line().startswith("Backend not installed")
    finally:
        prefs.local_data = ""
        if env.dir.exists():
            env.remove()


def test_install_returns_at_once_the_timer_follows_it_and_a_failure_is_shown(addon, prefs, tmp_path, monkeypatch):
    """Interactive Blender: the operator starts the child and returns; the timer callback polls it to the end."""
    bpy.context.preferences.system.use_online_access = True
    monkeypatch.setattr(addon, "ADDON_DIR", tmp_path / "no-wheel")
    with pytest.raises(RuntimeError, match="carries no backend wheel"):
        bpy.ops.mpod123.install_backend()
    (tmp_path / "addon" / "backend_wheel").mkdir(parents=True)
    (tmp_path / "addon" / "backend_wheel" / "mpod123-0.1.0-py3-none-any.whl").write_bytes(b"")
    monkeypatch.setattr(addon, "ADDON_DIR", tmp_path / "addon")
    saved = (prefs.torch_requirement, prefs.pip_args)
    prefs.torch_requirement = "mpod123-no-such-package==1.0"  # pip fails fast, after the environment is made
    prefs.pip_args = f"--no-index --find-links {tmp_path}"
    env = addon.managed_env()
    try:
        t0 = time.monotonic()
        assert bpy.ops.mpod123.install_backend() == {"FINISHED"}
        assert time.monotonic() - t0 < 5, "the operator returns while the child works"
        assert addon.installing() and bpy.app.timers.is_registered(_ops().install_tick)
        with pytest.raises(RuntimeError, match="already running"):
            bpy.ops.mpod123.install_backend()
        lines, deadline = [], time.monotonic() + 120
        while time.monotonic() < deadline:  # what Blender's timer does (timers never fire in background mode)
            lines.append(addon.status_line())
            if _ops().install_tick() is None:
                break
            time.sleep(0.2)
        assert any(line.startswith("Installing: ") for line in lines)
        assert not addon.installing()
        assert addon.status_line().startswith("Backend not usable: failed: pip could not install torch (ERROR: ")
        assert not env.usable() and env.log.is_file()
    finally:
        prefs.torch_requirement, prefs.pip_args = saved
        if bpy.app.timers.is_registered(_ops().install_tick):
            bpy.app.timers.unregister(_ops().install_tick)
        env.remove()
        addon.current().install_status = None


def test_check_backend_returns_at_once_and_the_panel_shows_the_doctor_result(addon, prefs):
    """Doctor imports torch and probes accelerators (seconds to minutes): the click must not freeze Blender."""
    env = addon.managed_env()
    with pytest.raises(RuntimeError, match="the backend is not installed: click Install Backend first"):
        bpy.ops.mpod123.check_backend()
    assert addon.check_lines() == ["Check: the backend is not installed: click Install Backend first"]
    try:
        env.python.parent.mkdir(parents=True, exist_ok=True)
        # the test's own interpreter (which has mpod123 and torch) behind the managed path: doctor really runs.
        # A wrapper, not a symlink: a symlinked venv python outside its venv loses the venv's site-packages.
        env.python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        env.python.chmod(0o755)
        env.marker.write_text(json.dumps({"torch": "2.13.0+cpu", "wheel_version": "0.1.0", "build": {"variant": "cpu"}}))
        t0 = time.monotonic()
        assert bpy.ops.mpod123.check_backend() == {"FINISHED"}
        returned_s = time.monotonic() - t0
        assert returned_s < 1.0, f"the operator waited {returned_s:.2f} s for doctor"
        assert addon.checking() and addon.check_lines() == ["Check: running mpod123 doctor in the backend environment..."]
        assert bpy.app.timers.is_registered(_ops().check_tick)
        assert not bpy.ops.mpod123.check_backend.poll(), "a second check while one runs is refused by poll()"
        addon.current().check_thread.join(timeout=240)
        assert not addon.checking()
        assert _ops().check_tick() is None, "the redraw timer stops with the check"
        lines = addon.check_lines()
        assert lines and not any("failed" in line or "error" in line.lower() for line in lines), lines
        assert any("torch" in line.lower() or "cpu" in line.lower() for line in lines), lines
        # scripts block with wait=True and get the same result
        assert bpy.ops.mpod123.check_backend(wait=True) == {"FINISHED"}
        assert not addon.checking() and addon.check_lines() == lines
    finally:
        if bpy.app.timers.is_registered(_ops().check_tick):
            bpy.app.timers.unregister(_ops().check_tick)
        env.remove()
        addon.current().check = None
