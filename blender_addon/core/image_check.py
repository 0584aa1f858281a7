"""Checks of an input image before it becomes a job: empty, not an image, or over the backend's limit. No bpy.

A job whose input the backend would refuse must never be queued: it would stay "unsent" and be uploaded
again at every Connect. So Generate refuses it at once, with the reason, and nothing is stored.
"""

from __future__ import annotations

import os
import struct

DEFAULT_MAX_IMAGE_BYTES = 50 << 20
"""The backend's default limit (``max_image_bytes`` of its hello reply), used until a backend has said hello."""

SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"BM", "BMP"), (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"), (b"v/1\x01", "OpenEXR"),
)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def size_problem(nbytes: int, max_bytes: int | None, what: str = "the image") -> str:
    """Why ``nbytes`` cannot be sent ('' when it can)."""
    limit = DEFAULT_MAX_IMAGE_BYTES if max_bytes is None else int(max_bytes)
    if nbytes <= 0:
        return f"{what} is empty (0 bytes): save it again, or choose another"
    if nbytes > limit:
        return (f"{what} is {_mb(nbytes)}, over the backend's limit of {_mb(limit)}: save it smaller (fewer pixels, "
                "or as JPEG) and choose it again")
    return ""


def file_problem(path: str, max_bytes: int | None) -> str:
    """Why the image file at ``path`` cannot be sent, from its size alone (cheap enough for poll())."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return f"no image file at {path}"
    return size_problem(size, max_bytes, f"the image file {os.path.basename(path)}")


def image_problem(data: bytes, max_bytes: int | None, what: str = "the image") -> str:
    """Why these image file bytes cannot be sent ('' when they can): size, a known format, pixels."""
    problem = size_problem(len(data), max_bytes, what)
    if problem:
        return problem
    kind = next((name for sig, name in SIGNATURES if data.startswith(sig)), "")
    if not kind and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        kind = "WebP"
    if not kind:
        return f"{what} is not a PNG, JPEG, WebP, BMP, TIFF or EXR file"
    if kind == "PNG":
        if len(data) < 33 or data[12:16] != b"IHDR":
            return f"{what} is a broken PNG (no image header)"
        width, height = struct.unpack(">II", data[16:24])
        if width == 0 or height == 0:
            return f"{what} has no pixels ({width} x {height})"
    return ""
