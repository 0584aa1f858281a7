"""Where the add-on keeps its files: the extension's user folder (a temp folder when run from a checkout).

The user folder holds ``jobs.json`` (the job file), ``owner`` (this installation's identity), ``results/``,
``previews/``, ``inputs/`` and ``backend/`` (the managed environment and the local backend's data).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import bpy

from ..core import jobfile

ADDON_PACKAGE = __package__.rpartition(".")[0] or "mpod123"
"""The add-on's package (``blender_addon`` from a checkout, ``bl_ext.<repo>.mpod123`` as an extension)."""
ADDON_DIR = Path(__file__).resolve().parents[1]
"""The add-on's own folder (its ``backend_wheel/`` and ``core/`` live there)."""


def user_dir(sub: str = "", create: bool = True) -> Path:
    """A folder of the extension's user data, or of the temp folder when not installed as an extension."""
    try:
        return Path(bpy.utils.extension_path_user(ADDON_PACKAGE, path=sub, create=create))
    except (ValueError, RuntimeError, TypeError):
        path = Path(tempfile.gettempdir()) / "mpod123-blender" / sub
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
