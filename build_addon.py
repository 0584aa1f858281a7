#!/usr/bin/env python3
"""Build the installable MPOD123 Blender extension: one zip per platform, with pyzmq bundled.

    python build_addon.py                      # download wheels, build every platform into dist/blender
    python build_addon.py --platforms linux-x64 --out /tmp/addon
    python build_addon.py --offline            # use the wheels already in blender_addon/wheels/

Steps:
1. Vendor ``backend/protocol.py``, ``backend/client.py`` and ``backend/transfer.py`` into
   ``blender_addon/core/vendor/`` (copied byte for byte; the add-on never imports
   ``backend``).
2. Download the pinned pyzmq wheels with ``pip download`` into
   ``blender_addon/wheels/``: cp311 (Blender 4.2-5.0) and cp312-abi3
   (Blender 5.1+) for each platform.
3. Build this project's own wheel (pure Python: ``mpod123``, ``backend``)
   with ``pip wheel`` from a clean copy of the sources, and put it in the
   staged add-on as a plain file, ``backend_wheel/mpod123-VERSION-py3-none-any.whl``.
   It is not a manifest wheel: Blender's own Python never loads torch;
   Install Backend installs it into a managed environment (see
   ``blender_addon/backend_env.py``). torch stays out of the zip.
4. Stage a copy of the add-on whose manifest lists exactly the chosen wheels
   and platforms, validate it with Blender's extension tool and build it with
   ``--split-platforms``.

Blender's extension tool (``blender_ext.py``) ships inside the ``bpy`` wheel
and runs with plain Python; ``--blender-ext`` points at another copy.
"""

from __future__ import annotations

import argparse
import filecmp
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ADDON = ROOT / "blender_addon"
WHEELS = ADDON / "wheels"
VENDOR = ADDON / "core" / "vendor"
VENDORED = ("protocol.py", "client.py", "transfer.py")
PYZMQ_VERSION = "27.3.0"

# our platform name -> (pip --platform tag, Blender platforms that wheel serves, filename marker)
PLATFORMS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "linux-x64": ("manylinux_2_28_x86_64", ("linux-x64",), "x86_64.whl"),
    "windows-x64": ("win_amd64", ("windows-x64",), "win_amd64.whl"),
    "windows-arm64": ("win_arm64", ("windows-arm64",), "win_arm64.whl"),
    "macos": ("macosx_11_0_universal2", ("macos-arm64", "macos-x64"), "universal2.whl"),
}
# (python version, abi): cp311 for Blender 4.2-5.0, the stable ABI from 3.12 for Blender 5.1+
PYTHONS = (("3.11", "cp311"), ("3.12", "abi3"))


class BuildError(RuntimeError):
    """A build step failed; the message says how to fix it."""


# ------------------------------------------------------------------ vendor
def vendor(check_only: bool = False) -> list[str]:
    """Copy the backend's protocol and client into the add-on; returns the files that changed."""
    changed = []
    for name in VENDORED:
        src, dst = ROOT / "backend" / name, VENDOR / name
        if not src.is_file():
            if dst.is_file():
                continue  # a source tree without backend/: keep the vendored copy
            raise BuildError(f"neither {src} nor {dst} exists: run from a full checkout of the repository")
        if dst.is_file() and filecmp.cmp(src, dst, shallow=False):
            continue
        if check_only:
            raise BuildError(f"{dst.relative_to(ROOT)} differs from {src.relative_to(ROOT)}: run build_addon.py to refresh it")
        shutil.copyfile(src, dst)
        changed.append(name)
    return changed


# ------------------------------------------------------------------ wheels
def wheel_name_parts(path: Path) -> tuple[str, str, str]:
    """(python tag, abi tag, platform tag) of a wheel file name."""
    parts = path.name[:-4].split("-")
    return parts[-3], parts[-2], parts[-1]


def find_wheel(platform: str, abi: str, folder: Path = WHEELS) -> Path | None:
    marker = PLATFORMS[platform][2]
    for path in sorted(folder.glob(f"pyzmq-{PYZMQ_VERSION}-*.whl")):
        _, wabi, _ = wheel_name_parts(path)
        if wabi == abi and path.name.endswith(marker):
            return path
    return None


def pip_command(platform: str, python: str, abi: str, dest: Path) -> list[str]:
    return [
        sys.executable, "-m", "pip", "download", f"pyzmq=={PYZMQ_VERSION}", "--only-binary=:all:", "--no-deps",
        "--platform", PLATFORMS[platform][0], "--python-version", python, "--implementation", "cp",
        "--abi", abi, "--dest", str(dest), "--quiet", "--disable-pip-version-check",
    ]


def get_wheels(platforms: list[str], offline: bool) -> list[Path]:
    WHEELS.mkdir(exist_ok=True)
    found, missing = [], []
    for platform in platforms:
        for python, abi in PYTHONS:
            wheel = find_wheel(platform, abi)
            if wheel is None and not offline:
                cmd = pip_command(platform, python, abi, WHEELS)
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                wheel = find_wheel(platform, abi)
                if wheel is None:
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                    missing.append(
                        f"pyzmq {PYZMQ_VERSION} for {platform}, Python {python} ({abi}): pip download failed: "
                        + " / ".join(tail)
                    )
                    continue
            if wheel is None:
                cmd = " ".join(pip_command(platform, python, abi, Path("blender_addon/wheels"))[1:])
                missing.append(f"pyzmq {PYZMQ_VERSION} for {platform}, Python {python} ({abi}): not in "
                               f"blender_addon/wheels/; get it with: python {cmd}")
                continue
            found.append(wheel)
    if missing:
        raise BuildError(
            "missing pyzmq wheels:\n  " + "\n  ".join(missing) + "\nCheck that pip can reach the package index "
            "(proxy, pip.conf), or download the wheels on a machine that can, copy them into blender_addon/wheels/ "
            "and build with --offline; or build fewer platforms with --platforms."
        )
    return found


# ------------------------------------------------------------------ our wheel
WHEEL_SOURCES = ("pyproject.toml", "README.md", "mpod123", "backend", "blender_addon", "blender_batch")
"""What ``pip wheel`` needs of the checkout (copied, so no build files land in the source tree)."""
BACKEND_WHEEL_DIR = "backend_wheel"


def build_project_wheel(dest: Path, source: Path = ROOT) -> Path:
    """This project's pure-Python wheel, built with pip (build isolation fetches setuptools and wheel)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mpod123-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in WHEEL_SOURCES:
            path = source / name
            if path.is_dir():
                shutil.copytree(path, src / name, ignore=shutil.ignore_patterns(
                    "__pycache__", "*.pyc", "*.egg-info", "wheels", "*.zip", "*.whl", BACKEND_WHEEL_DIR))
            elif path.is_file():
                shutil.copy2(path, src / name)
            else:
                raise BuildError(f"{path} is missing: build from a full checkout of the repository")
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--wheel-dir", str(out),
               "--disable-pip-version-check", "--quiet"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = sorted(out.glob("mpod123-*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise BuildError("pip could not build the mpod123 wheel: " + " / ".join(tail) +
                             "\nBuilding needs setuptools and wheel from the package index (or installed, with "
                             "PIP_NO_BUILD_ISOLATION=0 unset).")
        if not wheels[0].name.endswith("-py3-none-any.whl"):
            raise BuildError(f"the mpod123 wheel must be pure Python, got {wheels[0].name}")
        target = dest / wheels[0].name
        shutil.copy2(wheels[0], target)
    return target


# ------------------------------------------------------------------ build
def blender_ext_path(explicit: str | None = None) -> Path:
    """Blender's extension command-line tool, from --blender-ext or the installed bpy wheel."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise BuildError(f"--blender-ext {explicit}: no such file")
        return path
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(
            "Blender's extension tool was not found: install the bpy wheel (pip install bpy==5.0.1) or pass "
            "--blender-ext PATH/TO/blender/VERSION/scripts/addons_core/bl_pkg/cli/blender_ext.py"
        )
    for base in spec.submodule_search_locations:
        hits = sorted(glob.glob(os.path.join(base, "*", "scripts", "addons_core", "bl_pkg", "cli", "blender_ext.py")))
        if hits:
            return Path(hits[-1])
    raise BuildError("the installed bpy has no scripts/addons_core/bl_pkg/cli/blender_ext.py; pass --blender-ext")


def _toml_list(values: list[str]) -> str:
    if not values:
        return "[]"
    return "[\n" + "".join(f'  "{v}",\n' for v in values) + "]"


def staged_manifest(text: str, wheels: list[str], platforms: list[str]) -> str:
    """The manifest with its ``wheels`` and ``platforms`` lists replaced."""
    text, n1 = re.subn(r"(?ms)^wheels\s*=\s*\[.*?\]", "wheels = " + _toml_list(wheels), text, count=1)
    inline = "[" + ", ".join(f'"{p}"' for p in platforms) + "]"
    text, n2 = re.subn(r"(?m)^platforms\s*=\s*\[.*?\]", "platforms = " + inline, text, count=1)
    if not (n1 and n2):
        raise BuildError("blender_manifest.toml needs top-level 'wheels = [...]' and 'platforms = [...]' lists")
    return text


def stage(dest: Path, wheels: list[Path], platforms: list[str], project_wheel: Path | None = None) -> Path:
    """A copy of the add-on with only the chosen wheels, its manifest listing them, and our own wheel as a file."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(ADDON, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "wheels", "*.zip",
                                                                BACKEND_WHEEL_DIR))
    if project_wheel is not None:
        (dest / BACKEND_WHEEL_DIR).mkdir()
        shutil.copy2(project_wheel, dest / BACKEND_WHEEL_DIR / project_wheel.name)
    (dest / "wheels").mkdir()
    for wheel in wheels:
        shutil.copy2(wheel, dest / "wheels" / wheel.name)
    blender_platforms = sorted({p for name in platforms for p in PLATFORMS[name][1]})
    manifest = dest / "blender_manifest.toml"
    manifest.write_text(
        staged_manifest(manifest.read_text(), [f"./wheels/{w.name}" for w in wheels], blender_platforms)
    )
    return dest


def run_tool(tool: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(tool), *args], capture_output=True, text=True, check=False)
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise BuildError(f"blender_ext {args[0]} failed:\n{out}")
    return out


def validate(tool: Path, source: Path) -> str:
    return run_tool(tool, "validate", str(source))


def build(out: Path, platforms: list[str], offline: bool = False, blender_ext: str | None = None) -> list[Path]:
    """Everything: vendor, wheels, stage, validate, build. Returns the zips."""
    changed = vendor()
    if changed:
        print(f"vendored {', '.join(changed)} from backend/ into blender_addon/core/vendor/")
    vendor(check_only=True)
    wheels = get_wheels(platforms, offline)
    tool = blender_ext_path(blender_ext)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mpod123-addon-") as tmp:
        project_wheel = build_project_wheel(Path(tmp) / "project-wheel")
        staged = stage(Path(tmp) / "mpod123", wheels, platforms, project_wheel)
        validate(tool, staged)
        started = time.time() - 1.0
        run_tool(tool, "build", "--source-dir", str(staged), "--output-dir", str(out), "--split-platforms")
    return sorted(z for z in out.glob("*.zip") if z.stat().st_mtime >= started)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "dist" / "blender"), help="folder for the zips (default: dist/blender)")
    ap.add_argument("--offline", action="store_true", help="use the wheels already in blender_addon/wheels/; no download")
    ap.add_argument("--platforms", default=",".join(PLATFORMS),
                    help=f"comma-separated subset of {', '.join(PLATFORMS)} (default: all)")
    ap.add_argument("--blender-ext", help="path of Blender's blender_ext.py (default: the one in the bpy wheel)")
    args = ap.parse_args(argv)
    args.platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
    unknown = [p for p in args.platforms if p not in PLATFORMS]
    if unknown or not args.platforms:
        ap.error(f"unknown platform(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(PLATFORMS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        zips = build(Path(args.out).resolve(), args.platforms, args.offline, args.blender_ext)
    except BuildError as exc:
        print(f"build_addon: error: {exc}", file=sys.stderr)
        return 1
    print("built:")
    for z in zips:
        print(f"  {z}")
    print("install: Blender > Edit > Preferences > Get Extensions > Install from Disk (the zip for your platform)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
