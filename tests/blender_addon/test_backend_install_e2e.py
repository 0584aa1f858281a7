"""From the extension zip to an imported mesh without a terminal, in the real bpy module.

Fresh BLENDER_USER_* folders; the linux zip built by build_addon.py; the
managed environment installed by the add-on's own operators (torch pinned as
constraints.txt pins it, so this machine's CPU build); the local backend
started from that environment with tiny models; one Generate through to a
textured mesh in the scene. On the way: Install with Allow Online Access off
creates nothing, and an install cancelled while torch installs is unusable
until Repair mends it. Slow (a real pip install of torch and the backend's
dependencies): about 3 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("bpy")
pytest.importorskip("zmq")

import build_addon
from tests.addon_backend import ROOT, free_port, object_png


def _torch_pin() -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip().startswith("torch=="):
            return line.strip()
    pytest.fail("constraints.txt pins no torch")


@pytest.mark.slow
def test_zip_to_imported_mesh_with_the_managed_backend(tmp_path):
    try:
        build_addon.blender_ext_path()
        build_addon.get_wheels(["linux-x64"], offline=False)
    except build_addon.BuildError as exc:
        pytest.skip(f"cannot build the linux zip here: {exc}")
    zips = build_addon.build(tmp_path / "zips", ["linux-x64"], offline=True)
    assert len(zips) == 1
    image = tmp_path / "mug.png"
    image.write_bytes(object_png())
    user = tmp_path / "user"
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)},
        "BLENDER_USER_CONFIG": str(user / "config"), "BLENDER_USER_SCRIPTS": str(user / "scripts"),
        "BLENDER_USER_EXTENSIONS": str(user / "extensions"), "BLENDER_USER_DATAFILES": str(user / "datafiles"),
        "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
    }
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "addon_install_backend.py"), str(zips[0]), str(image),
         str(free_port()), _torch_pin(), str(out)],
        capture_output=True, text=True, check=False, env=env, timeout=600, cwd=tmp_path,
    )
    res = json.loads(out.read_text()) if out.is_file() else {}
    why = f"{res.get('error')}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{res.get('backend_log_tail')}"
    assert proc.returncode == 0 and "error" not in res, why
    print(json.dumps({k: res[k] for k in ("click_to_usable_s", "repair_s", "job_s", "total_s", "build")}, indent=1))

    root = Path(res["root"])
    assert root.is_relative_to(user / "datafiles" / "mpod123"), \
        "the environment lives in the add-on's data folder (datafiles/mpod123), which an uninstall keeps"
    assert res["installed"] == ["FINISHED"] and res["wheel"].endswith("-py3-none-any.whl")
    # Allow Online Access off: a clear refusal, and not even the folder was made
    assert res["online_before"] is False and res["online_after"] is True
    assert "Allow Online Access" in res["offline_error"] and "System > Network" in res["offline_error"]
    assert res["offline_root_exists"] is False
    # cancelled mid-install: torch was installing, now nothing is usable and no installer process is left
    fraction, step = res["before_cancel"]
    assert step.startswith("torch:") and 0.05 < fraction < 0.6, res["before_cancel"]
    assert res["status_line_while_installing"].startswith("Installing: torch:")
    assert res["cancel"] == {**res["cancel"], "state": "cancelled", "usable": False, "marker": False,
                             "venv_exists": True, "group_alive": False}
    assert res["cancel"]["status_line"].startswith("Backend not usable: cancelled")
    # Repair made it usable: this machine's CPU torch and the bundled wheel's version
    assert res["repair_result"] == ["FINISHED"]
    info = res["env_info"]
    assert info["torch"].startswith(_torch_pin().split("==")[1]) and info["cuda"] is None
    assert info["wheel_version"] == build_addon_version() and info["build"]["kind"] == "cpu"
    assert res["status_line"].startswith("Backend ready: torch")
    assert res["log_kept"] and res["progress_monotone"]
    # Check Backend: `mpod123 doctor --json` in the managed environment
    assert res["check_result"] == ["FINISHED"]
    assert res["check_lines"] == [f"Check: CPU, torch {info['torch']} (cpu)", "Check: accelerators: none",
                                  "Check: models: will download 9.3 GB"], res["check_lines"]
    # Start Local ran the managed environment's Python as an argument list
    cmd = res["local_command"]
    assert cmd[:4] == [str(root / "venv" / "bin" / "python"), "-m", "mpod123", "serve"] and "--tiny" in cmd
    assert res["local_pid"] > 0 and res["connection"] == "connected"
    assert res["server_gpu"] == "none (CPU), models: tiny (built in, no download)", "the hello summary, in the panel"
    # Generate through to an imported, textured mesh
    assert res["final"] == "imported", (res["job_message"], res["backend_log_tail"])
    meshes = [o for o in res["new_objects"] if o[1] == "MESH"]
    assert len(meshes) == 1 and meshes[0][0] == "mug" and meshes[0][2] > 0 and meshes[0][3] >= 1, res["new_objects"]
    assert res["texture"] and min(res["texture"]["size"]) > 0 and res["texture"]["max"] > 0
    assert res["stopped_pid_gone"] is True


def build_addon_version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
