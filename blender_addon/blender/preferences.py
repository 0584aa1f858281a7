"""Add-on preferences: where the backend is, how to start a local one, keys and timeouts.

Keys are kept here (``subtype='PASSWORD'``), never on the Scene, so they are
not saved into .blend files that get shared.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import bpy
from bpy.props import BoolProperty, FloatProperty, IntProperty, StringProperty

from . import preview_object
from .paths import ADDON_PACKAGE
from .properties import MPOD123_ImportOptions

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
DEFAULT_LOCAL_COMMAND = ""
"""Empty: start the managed backend (Install Backend); an expert's command otherwise."""


def _mesh_previews_toggled(self, context) -> None:
    if not self.show_mesh_previews:
        preview_object.remove_all()


class PreferenceFields(MPOD123_ImportOptions):
    """The preferences' fields (the registered class, with its drawing, is ``ui/preferences.py``)."""

    address: StringProperty(
        name="Server Address", default=DEFAULT_ADDRESS,
        description="The backend's ZeroMQ address, e.g. tcp://127.0.0.1:5555 (local) or tcp://gpu-box:5555 (remote, "
                    "needs keys and Blender's Allow Online Access)",
    )
    use_local_backend: BoolProperty(
        name="Start a Local Backend", default=True,
        description="When the address is on this machine and nothing answers, Connect starts the command below "
                    "and the add-on stops it again when Blender quits or the add-on is disabled",
    )
    local_command: StringProperty(
        name="Local Command", default=DEFAULT_LOCAL_COMMAND,
        description="Empty: the managed backend (Install Backend below). Otherwise a command that starts a backend "
                    "you installed yourself, run without a shell; {address}, {data} and {python} (the managed "
                    "environment's Python) are filled in, e.g. /path/to/venv/bin/mpod123 serve --bind {address} --data {data}",
    )
    local_data: StringProperty(
        name="Local Data Folder", subtype="DIR_PATH", default="",
        description="Where the local backend keeps its job database and results (empty: the add-on's user folder)",
    )
    server_public_key: StringProperty(
        name="Server Public Key", subtype="PASSWORD", default="",
        description="The 40-character Z85 key from the server's server.key (empty: no encryption, loopback only)",
    )
    client_public_key: StringProperty(
        name="Client Public Key", subtype="PASSWORD", default="",
        description="This client's public key, from its NAME.key_secret file",
    )
    client_secret_key: StringProperty(
        name="Client Secret Key", subtype="PASSWORD", default="",
        description="This client's secret key, from its NAME.key_secret file",
    )
    server_key_file: StringProperty(
        name="Server Key File", subtype="FILE_PATH", default="",
        description="server.key from `mpod123 keys init` (Load Keys copies the key into the field above)",
    )
    client_key_file: StringProperty(
        name="Client Key File", subtype="FILE_PATH", default="",
        description="NAME.key_secret from `mpod123 keys init` (Load Keys copies both keys into the fields above)",
    )
    timeout_s: FloatProperty(
        name="Request Timeout", default=10.0, min=0.5, max=600.0, unit="TIME_ABSOLUTE",
        description="Longest wait for one answer from the backend; past it the add-on reports the backend unreachable",
    )
    start_timeout_s: FloatProperty(
        name="Local Start Timeout", default=30.0, min=1.0, max=600.0, unit="TIME_ABSOLUTE",
        description="How long a freshly started local backend may take to answer",
    )
    events_per_tick: IntProperty(
        name="Events per Update", default=50, min=1, max=10000,
        description="Most backend events applied per interface update (keeps Blender responsive)",
    )
    auto_import: BoolProperty(
        name="Import When Done", default=True,
        description="Import each finished result at once (otherwise use Import Result)",
    )
    show_mesh_previews: BoolProperty(
        name="3D Preview in the Scene", default=True, update=_mesh_previews_toggled,
        description="While a job runs, show its current shape as an object in the Generating collection "
                    "(replaced as the job goes on, removed when the result is imported)",
    )
    # ---- the managed backend (Install Backend)
    torch_requirement: StringProperty(
        name="Torch Requirement", default="torch",
        description="What pip installs for torch, e.g. torch or torch==2.13.0 (a studio can pin a version)",
    )
    torch_index_url: StringProperty(
        name="Torch Index URL", default="",
        description="Package index for torch only (e.g. PyTorch's CUDA or ROCm wheel index, or a studio mirror); "
                    "empty: pip's default",
    )
    pip_args: StringProperty(
        name="Extra pip Arguments", default="",
        description="Added to every pip run of the install, e.g. --proxy http://proxy:3128 or --find-links /mirror",
    )
    backend_python: StringProperty(
        name="Backend Python", subtype="FILE_PATH", default="",
        description="The Python the backend environment is made with (empty: the one Blender ships)",
    )
    serve_args: StringProperty(
        name="Serve Arguments", default="",
        description="Extra arguments for the managed backend's `mpod123 serve`, e.g. --workers 2 or --sd /models/sd15",
    )
    # --- cache limits (the import options, defaults for every job, come from MPOD123_ImportOptions) ---
    cache_limit_mb: IntProperty(
        name="Cache Size Limit", default=2048, min=0, soft_max=100_000,
        description="Most megabytes of downloaded results, previews and input copies the add-on keeps; the "
                    "oldest go first, never those of an unfinished job (0: no limit)")
    cache_max_days: IntProperty(
        name="Cache Age Limit", default=30, min=0, soft_max=3650,
        description="Delete cached results, previews and input copies older than this many days (0: keep them)")
    # --- end of cache limits ---

class _Defaults:
    """The preferences' defaults, for when the add-on runs without being enabled (scripts, tests)."""

    def __init__(self) -> None:
        for name, prop in fields().items():
            setattr(self, name, prop.keywords.get("default"))


def fields() -> dict:
    """Every preference's name and property (the annotations evaluated, as Blender does at registration)."""
    out = {}
    for cls in (MPOD123_ImportOptions, PreferenceFields):
        scope = vars(sys.modules[cls.__module__])
        for name, prop in vars(cls).get("__annotations__", {}).items():
            out[name] = eval(prop, scope) if isinstance(prop, str) else prop  # noqa: S307  our own annotations
    return out


_FALLBACK: _Defaults | None = None


def prefs(context=None):
    """The add-on's preferences (or the defaults when it is imported without being enabled)."""
    global _FALLBACK
    addons = (context or bpy.context).preferences.addons
    entry = addons.get(ADDON_PACKAGE)
    if entry is not None and entry.preferences is not None:
        return entry.preferences
    if _FALLBACK is None:
        _FALLBACK = _Defaults()
    return _FALLBACK


KEPT = tuple(vars(MPOD123_ImportOptions)["__annotations__"]) + tuple(vars(PreferenceFields)["__annotations__"])
"""Every preference is kept across a disable and enable (Blender forgets an add-on's preferences then)."""


def save(p, path: Path) -> None:
    """Write the preferences that differ from their defaults into ``path`` (JSON)."""
    defaults = _Defaults()
    values = {}
    for name in KEPT:
        value = getattr(p, name, None)
        if isinstance(value, (bool, int, float, str)) and value != getattr(defaults, name):
            values[name] = value
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(values, indent=1, sort_keys=True))
    os.replace(tmp, path)


def restore(p, path: Path) -> int:
    """Give back the preferences kept by :func:`save`, where they are still at their defaults (a fresh
    enable); returns how many were set."""
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0
    defaults = _Defaults()
    n = 0
    for name, value in values.items() if isinstance(values, dict) else ():
        if name in KEPT and getattr(p, name, None) == getattr(defaults, name):
            try:
                setattr(p, name, value)
                n += 1
            except (TypeError, ValueError, AttributeError):
                pass
    return n
