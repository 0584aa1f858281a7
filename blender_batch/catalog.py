"""Blender asset catalogs: ``blender_assets.cats.txt`` at the root of an asset library.

The file lists ``UUID:catalog/path:Simple Name`` lines after a ``VERSION 1``
line. A catalog gets a UUID derived from its path (uuid5), so the same
``--catalog`` always maps to the same catalog, in every run and on every
machine. Lines already in the file are kept as they are, and a path that is
already listed keeps the UUID it has there.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

from .manifest import file_mode

CATS_FILE = "blender_assets.cats.txt"
NAMESPACE = uuid.UUID("5b1e7c1a-0f3d-4c55-9a8e-6d2f4b7a9c31")
"""Fixed namespace of this tool's catalog UUIDs (any constant works; it must never change)."""

HEADER = """# This is an Asset Catalog Definition file for Blender.
#
# Empty lines and lines starting with `#` will be ignored.
# The first non-ignored line should be the version indicator.
# Other lines are of the format "UUID:catalog/path/for/assets:simple catalog name"

VERSION 1

"""


def normalize(path: str) -> str:
    """A catalog path: '/'-separated parts, no empty parts, no ':' (the file's separator)."""
    parts = [p.strip().replace(":", "-") for p in path.replace("\\", "/").split("/")]
    parts = [p for p in parts if p]
    if not parts:
        raise ValueError("--catalog must name a catalog, e.g. 'Products' or 'Products/Shoes'")
    return "/".join(parts)


def catalog_uuid(path: str) -> str:
    return str(uuid.uuid5(NAMESPACE, normalize(path)))


def read_catalogs(library: str | Path) -> dict[str, str]:
    """{catalog path: uuid} of a library's catalog file (empty when there is none)."""
    file = Path(library) / CATS_FILE
    out: dict[str, str] = {}
    if not file.is_file():
        return out
    for line in file.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "VERSION")):
            continue
        parts = line.split(":", 2)
        if len(parts) >= 2:
            out.setdefault(parts[1], parts[0])
    return out


def ensure_catalog(library: str | Path, path: str) -> str:
    """Make sure ``path`` (and its parents, as Blender expects) is in the library's catalog file; return its UUID."""
    library = Path(library)
    path = normalize(path)
    existing = read_catalogs(library)
    if path in existing:
        return existing[path]
    file = library / CATS_FILE
    text = file.read_text(encoding="utf-8") if file.is_file() else HEADER
    if text and not text.endswith("\n"):
        text += "\n"
    parts = path.split("/")
    for i in range(1, len(parts) + 1):
        sub = "/".join(parts[:i])
        if sub not in existing:
            text += f"{catalog_uuid(sub)}:{sub}:{sub.replace('/', '-')}\n"
            existing[sub] = catalog_uuid(sub)
    fd, tmp = tempfile.mkstemp(prefix=f".{CATS_FILE}.", dir=library)
    os.chmod(tmp, file_mode(file))
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, file)
    return existing[path]
