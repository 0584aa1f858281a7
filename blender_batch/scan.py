"""Find the photos in a folder: check each one, drop duplicates, give each a unique asset name.

Nothing here stops a batch: a file that cannot be used is returned as a
:class:`Skipped` with the reason, and the batch goes on with the rest.

* **Images only.** A file is an image when Pillow identifies it from its
  header, its size is non-zero and ``verify()`` finds its structure intact
  (for PNG that checks every chunk's CRC, which catches truncated and
  corrupted files without decoding the pixels).
* **Duplicates** are found by the sha256 of the content: the first file in
  name order is kept and the others are reported as duplicates of it.
* **Asset names** come from the file name, reduced to letters, digits, ``-``
  and ``_``. Names that collide (``mug.png`` and ``mug.jpg``, or names equal
  up to case, which collide on case-insensitive file systems) get the
  extension appended (``mug_jpg``), then a counter. A name already given to
  the same content in an earlier run is kept, so a rerun never renames an
  asset.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "TGA")
"""Formats the backend's preprocessing reads."""

MAX_PHOTO_BYTES = 50 << 20
"""The backend's default limit on one submitted image."""


@dataclass
class Photo:
    path: Path
    sha256: str
    format: str
    size: tuple[int, int]
    name: str = ""
    note: str = ""
    """Why the name differs from the file's stem (a collision), or empty."""

    @property
    def source(self) -> str:
        return self.path.name


@dataclass
class Skipped:
    path: Path
    reason: str

    @property
    def source(self) -> str:
        return self.path.name


SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"BM", "BMP"), (b"II*\x00", "TIFF"),
              (b"MM\x00*", "TIFF"))


def _signature(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((kind for magic, kind in SIGNATURES if data.startswith(magic)), "")


def probe_image(data: bytes) -> tuple[str, tuple[int, int]]:
    """(format, (width, height)) of an image file's bytes; raises ValueError with the reason otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt, size = im.format, im.size
                im.verify()
    except UnidentifiedImageError:
        kind = _signature(data)
        if kind:
            raise ValueError(f"damaged image (it starts like a {kind} file, but Pillow cannot read its header)") from None
        raise ValueError("not an image (Pillow cannot identify it)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"image too large: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for damaged files
        raise ValueError(f"damaged image: {type(exc).__name__}: {exc}") from None
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"unsupported image format {fmt} (use one of {', '.join(IMAGE_FORMATS)})")
    if size[0] < 1 or size[1] < 1:
        raise ValueError("the image is empty (0 pixels)")
    return fmt, size


def sanitize(stem: str) -> str:
    """An asset/file name from a file stem: letters, digits, '-' and '_' only, at most 60 characters."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_-")[:60]
    return name or "photo"


def tags_for(stem: str) -> list[str]:
    """Search tags from a file name: its words, lower case (``RedShoe_02-side`` -> red, shoe, side)."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", stem)
    words = [w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w]
    out: list[str] = []
    for w in words:
        if len(w) >= 2 and not w.isdigit() and w not in out:
            out.append(w)
    return out


def scan(folder: str | Path, known_names: Mapping[str, str] | None = None,
         reserved: tuple[str, ...] = ()) -> tuple[list[Photo], list[Skipped]]:
    """The usable photos of ``folder`` (not recursive; hidden files ignored) and the skipped files.

    ``known_names`` maps a content sha256 to the asset name an earlier run gave it; ``reserved`` names
    are never given to a photo (the batch's own files).
    """
    folder = Path(folder)
    photos: list[Photo] = []
    skipped: list[Skipped] = []
    by_hash: dict[str, Photo] = {}
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            continue
        try:
            if path.stat().st_size > MAX_PHOTO_BYTES:
                skipped.append(Skipped(path, f"too large ({path.stat().st_size >> 20} MiB; the limit is {MAX_PHOTO_BYTES >> 20} MiB)"))
                continue
            data = path.read_bytes()
        except OSError as exc:
            skipped.append(Skipped(path, f"unreadable: {exc.strerror or exc}"))
            continue
        try:
            fmt, size = probe_image(data)
        except ValueError as exc:
            skipped.append(Skipped(path, str(exc)))
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in by_hash:
            skipped.append(Skipped(path, f"duplicate of {by_hash[digest].source} (same content)"))
            continue
        photo = Photo(path, digest, fmt, size)
        by_hash[digest] = photo
        photos.append(photo)
    assign_names(photos, known_names or {}, reserved)
    return photos, skipped


def assign_names(photos: list[Photo], known_names: Mapping[str, str], reserved: tuple[str, ...] = ()) -> None:
    """Give every photo a unique asset name (unique ignoring case), keeping names from earlier runs."""
    taken: set[str] = {r.lower() for r in reserved}
    for photo in photos:  # names from earlier runs first, so they stay put
        name = known_names.get(photo.sha256)
        if name and name.lower() not in taken:
            photo.name = name
            taken.add(name.lower())
    for photo in photos:
        if photo.name:
            continue
        stem, ext = os.path.splitext(photo.path.name)
        base = sanitize(stem)
        name = base
        if name.lower() in taken:
            name = sanitize(f"{base}_{ext.lstrip('.')}") if ext else base
            n = 2
            while name.lower() in taken:
                name = f"{base}_{n}"
                n += 1
            photo.note = f"renamed to {name}: another photo is already named {base}"
        photo.name = name
        taken.add(name.lower())
