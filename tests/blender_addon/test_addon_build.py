"""The add-on as a package: vendored modules, the manifest, build_addon.py, installing the zip, drawing the panels."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ADDON = ROOT / "blender_addon"
import build_addon

from tests.addon_live import draw_panels  # noqa: E402


def _blender_ext() -> Path:
    try:
        return build_addon.blender_ext_path()
    except build_addon.BuildError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("name", build_addon.VENDORED)
def test_vendored_modules_are_identical_to_the_backends(name):
    assert filecmp.cmp(ROOT / "backend" / name, ADDON / "core" / "vendor" / name, shallow=False), (
        f"blender_addon/core/vendor/{name} differs from backend/{name}: run python build_addon.py"
    )
    build_addon.vendor(check_only=True)


def test_every_vendored_file_is_checked():
    """Nothing sits in core/vendor/ that the byte-identity check above does not cover."""
    present = sorted(p.name for p in (ADDON / "core" / "vendor").glob("*.py") if p.name != "__init__.py")
    assert present == sorted(build_addon.VENDORED)


def test_the_client_imports_without_bpy_or_torch():
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import blender_addon.core.client as c; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'bpy', 'torch', 'diffusers', 'transformers', 'mpod123', 'backend', 'zmq'})))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == ["zmq"], "only zmq (which proves the probe sees imports)"


def test_the_manifest_validates_and_lists_every_wheel():
    tool = _blender_ext()
    out = subprocess.run([sys.executable, str(tool), "validate", str(ADDON)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    manifest = tomllib.loads((ADDON / "blender_manifest.toml").read_text())
    assert manifest["id"] == "mpod123" and manifest["type"] == "add-on"
    assert len(manifest["tagline"]) <= 64 and manifest["tagline"][-1].isalnum()
    assert tuple(int(v) for v in manifest["blender_version_min"].split(".")) >= (4, 2, 0)
    assert set(manifest["permissions"]) == {"network", "files"} and all(manifest["permissions"].values())
    wheels = manifest["wheels"]
    assert len(wheels) == 8 and all(f"pyzmq-{build_addon.PYZMQ_VERSION}-" in w for w in wheels)
    for marker in ("x86_64.whl", "win_amd64.whl", "win_arm64.whl", "universal2.whl"):
        tags = sorted(w.split("-")[3] for w in wheels if w.endswith(marker))
        assert tags == ["abi3", "cp311"], marker


def test_a_missing_wheel_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(build_addon, "WHEELS", tmp_path)
    monkeypatch.setattr(build_addon, "find_wheel", lambda p, abi, folder=tmp_path: None)
    with pytest.raises(build_addon.BuildError) as info:
        build_addon.get_wheels(["windows-arm64"], offline=True)
    text = str(info.value)
    assert "windows-arm64, Python 3.11 (cp311)" in text and "windows-arm64, Python 3.12 (abi3)" in text
    assert "pip download pyzmq==" in text and "--platform win_arm64" in text and "--offline" in text


@pytest.fixture(scope="module")
def linux_zip(tmp_path_factory):
    """Build the linux-x64 zip (downloading its two wheels if they are not here yet)."""
    _blender_ext()
    try:
        build_addon.get_wheels(["linux-x64"], offline=False)
    except build_addon.BuildError as exc:
        pytest.skip(f"cannot get the linux pyzmq wheels from the package index (CI can): {exc}")
    out = tmp_path_factory.mktemp("zips")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "build_addon.py"), "--offline", "--platforms", "linux-x64", "--out", str(out)],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    zips = sorted(out.glob("*.zip"))
    assert [z.name for z in zips] == ["mpod123-0.1.0-linux_x64.zip"]
    assert str(zips[0]) in proc.stdout, "build_addon.py says where the zip is"
    return zips[0]


def test_the_zip_holds_the_addon_the_vendored_modules_and_only_linux_wheels(linux_zip):
    with zipfile.ZipFile(linux_zip) as z:
        names = set(z.namelist())
        assert z.read("core/vendor/protocol.py") == (ROOT / "backend" / "protocol.py").read_bytes()
        manifest = z.read("blender_manifest.toml").decode()
    for module in ("__init__.py", "core/client.py", "session/loop.py", "blender/importer.py", "ui/operators.py", "ui/panels.py",
                   "blender/preferences.py", "blender/properties.py", "core/vendor/client.py", "blender_manifest.toml"):
        assert module in names
    wheels = sorted(n for n in names if n.startswith("wheels/") and n.endswith(".whl"))
    assert len(wheels) == 2 and all("x86_64" in w for w in wheels), wheels
    assert not any("__pycache__" in n for n in names)
    assert 'platforms = ["linux-x64"]' in manifest


def test_the_zip_carries_the_backend_wheel_as_a_file_not_a_manifest_wheel(linux_zip, tmp_path):
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    with zipfile.ZipFile(linux_zip) as z:
        ours = [n for n in z.namelist() if n.startswith("backend_wheel/")]
        assert ours == [f"backend_wheel/mpod123-{version}-py3-none-any.whl"], ours
        manifest = tomllib.loads(z.read("blender_manifest.toml").decode())
        (tmp_path / "w.whl").write_bytes(z.read(ours[0]))
    assert not any("mpod123-" in w for w in manifest["wheels"]), "Blender's own Python must never install it"
    with zipfile.ZipFile(tmp_path / "w.whl") as w:
        names = set(w.namelist())
        meta = w.read(f"mpod123-{version}.dist-info/METADATA").decode()
        wheel_info = w.read(f"mpod123-{version}.dist-info/WHEEL").decode()
    for module in ("mpod123/__main__.py", "mpod123/cli/main.py", "backend/server.py", "backend/kinds/image.py"):
        assert module in names, module
    assert "Root-Is-Purelib: true" in wheel_info and not any(n.endswith((".so", ".pyd")) for n in names)
    assert "Requires-Dist: torch" in meta, "torch comes from the install's own step, but the wheel still declares it"
    assert not any(n.endswith(".pyc") or "__pycache__" in n for n in names)
    assert linux_zip.stat().st_size < 5 << 20, "torch stays out of the zip: it stays small"


INSTALL_SCRIPT = r"""
import json, sys
import bpy
zip_path = sys.argv[1]
res = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
addons = [a.module for a in bpy.context.preferences.addons]
mod = sys.modules.get("bl_ext.user_default.mpod123")
out = {
    "result": sorted(res), "enabled": "bl_ext.user_default.mpod123" in addons,
    "file": mod.__file__ if mod else None,
    "ops": [hasattr(bpy.ops.mpod123, n) for n in ("generate", "cancel", "connect", "import_result")],
    "panel": hasattr(bpy.types, "MPOD123_PT_main"),
}
import bl_ext.user_default.mpod123.session as session
out["results_dir"] = str(session.results_dir())
print("RESULT " + json.dumps(out))
"""


def test_the_built_zip_installs_and_enables_in_blender(linux_zip, tmp_path):
    user = tmp_path / "user"
    env = {
        **os.environ,
        "BLENDER_USER_CONFIG": str(user / "config"), "BLENDER_USER_SCRIPTS": str(user / "scripts"),
        "BLENDER_USER_EXTENSIONS": str(user / "extensions"), "BLENDER_USER_DATAFILES": str(user / "datafiles"),
    }
    proc = subprocess.run([sys.executable, "-c", INSTALL_SCRIPT, str(linux_zip)], capture_output=True, text=True, check=False,
                          env=env, timeout=120, cwd=tmp_path)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(lines[-1][7:])
    assert res["result"] == ["FINISHED"] and res["enabled"] and res["panel"] and all(res["ops"]), res
    assert res["file"].startswith(str(user / "extensions" / "user_default" / "mpod123"))
    assert res["results_dir"] == str(user / "datafiles" / "mpod123" / "results"), \
        "the data folder is outside the extension's user folder, which Blender deletes on uninstall"
    site = user / "extensions" / ".local" / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    assert (site / "zmq" / "__init__.py").is_file(), "Blender installed the bundled pyzmq wheel"


def test_every_panel_and_the_preferences_draw_into_a_real_layout():
    res, problems = draw_panels()
    assert res["errors"] == [] and problems == "", (res["errors"], problems)
    expected = ["MPOD123_PT_main", *["MPOD123_PT_input"] * 4, "MPOD123_PT_job", "MPOD123_PT_import", "MPOD123_PT_server",
                "MPOD123_PT_progress", "MPOD123_PT_previews", "MPOD123_PT_image_editor", "MPOD123_UL_jobs",
                "preferences"]
    assert res["drawn"] == expected
    assert all(res["registered"].values()) and res["category"] == ["MPOD123"]
    assert res["polls"] == {}, "every operator's poll() runs without error"
    assert res["lists"] == ["MPOD123_UL_jobs"], "the job list is a UIList"
    assert res["previews"] == ["MPOD123 outline aaaaaaaa", "MPOD123 detail aaaaaaaa"]


def test_the_draw_check_notices_a_bad_property_or_operator():
    _, problems = draw_panels("--canary")
    assert "no_such_property" in problems and "no_such_operator" in problems
