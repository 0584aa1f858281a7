"""Where the add-on keeps its files: its data folder (a temp folder when run from a checkout).

The data folder holds ``jobs.json`` (the job file), ``owner`` (this installation's identity), ``results/``,
``previews/``, ``inputs/``, ``preferences.json`` and ``backend/`` (the managed environment and the local
backend's data). It is Blender's user ``datafiles/mpod123`` folder, not the extension's own user folder:
Blender deletes that one when the extension is uninstalled (and freezes while it deletes the environment's
thousands of files), and an artist who reinstalls or upgrades the add-on keeps the job list, the results and
the environment. An older version's extension user folder is moved here once.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import bpy

from ..core import jobfile

ADDON_PACKAGE = __package__.rpartition(".")[0] or "mpod123"
"""The add-on's package (``blender_addon`` from a checkout, ``bl_ext.<repo>.mpod123`` as an extension)."""
ADDON_DIR = Path(__file__).resolve().parents[1]
"""The add-on's own folder (its ``backend_wheel/`` and ``core/`` live there)."""


DATA_NAME = "mpod123"
"""The data folder's name in Blender's user ``datafiles``."""


def data_root() -> Path:
    """The add-on's data folder: ``datafiles/mpod123`` when installed as an extension, else the temp folder."""
    if not ADDON_PACKAGE.startswith("bl_ext."):
        return Path(tempfile.gettempdir()) / "mpod123-blender"
    root = Path(bpy.utils.user_resource("DATAFILES", path=DATA_NAME))
    if not root.exists():
        adopt_legacy(root)
    return root


def adopt_legacy(root: Path) -> None:
    """Move an older version's data from the extension's user folder (same disk: a rename) into ``root``."""
    try:
        legacy = Path(bpy.utils.extension_path_user(ADDON_PACKAGE, create=False))
    except (ValueError, RuntimeError, TypeError):
        return
    if legacy.is_dir() and any(legacy.iterdir()):
        root.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.move(str(legacy), str(root))
        except OSError as exc:
            print(f"MPOD123 warning: could not move {legacy} to {root}: {exc}")


def user_dir(sub: str = "", create: bool = True) -> Path:
    """A folder of the add-on's data (see :func:`data_root`)."""
    path = data_root() / sub
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir() -> Path:
    return user_dir("results")


def cache_dirs() -> list[Path]:
    return [user_dir("results"), user_dir("previews"), user_dir("inputs")]


def job_file() -> jobfile.JobFile:
    return jobfile.JobFile.at(user_dir() / "jobs.json")


def owner_id() -> str:
    """This installation's identity on the backend (a file in the user folder, stable across launches)."""
    return jobfile.owner_id(user_dir())


def result_path(job) -> Path:
    return results_dir() / f"{job.job_id}.glb"


def preview_path(job_id: str, stage: str) -> str:
    return str(user_dir("previews") / f"{job_id}-{stage}.png")
