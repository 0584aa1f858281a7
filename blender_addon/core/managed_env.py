"""The managed backend's folder: the environment, its marker, log and status, and the wheel versions."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import EnvError

ENV_DIR = "venv"
MARKER = "mpod123-env.json"
"""Written inside the environment as the install's very last act: its presence means usable."""
LOG = "install.log"
STATUS = "install-status.json"
WHEEL_DIR = "backend_wheel"
"""The folder of the extension that holds this project's wheel."""


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


