"""Test inputs made in code: photos of the procedural object from cameras built with look_at (not with the code
under test), PNG bytes, and a PNG whose header claims a huge image."""

from __future__ import annotations

import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mpod123.bench.synthetic import render_object
from mpod123.camera import Cameras, look_at, orbit_cameras

E = 2.5
EYES = {  # where a photographer stands for each side of the object (it faces +Z, its left is +X)
    "front": (0.0, 0.0, E),
    "left": (E, 0.0, 0.0),
    "back": (0.0, 0.0, -E),
    "right": (-E, 0.0, 0.0),
    "left_above": (E * math.sin(math.radians(80)), E * math.cos(math.radians(80)), 0.0),
}


def camera_at(eye, size=96, target=(0.0, 0.0, 0.0), fov_deg=40.0) -> Cameras:
    eye_t, target_t = torch.tensor([eye], dtype=torch.float32), torch.tensor([target], dtype=torch.float32)
    return Cameras(look_at(eye_t, target_t), torch.tensor([math.radians(fov_deg)]), size, size)


def png_of(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.clip(rgba, 0, 1) * 255 + 0.5).astype(np.uint8), "RGBA").save(buf, "PNG")
    return buf.getvalue()


def view_photo(side: str, size: int = 96) -> bytes:
    """A cut-out PNG of the object seen from ``side`` (a key of EYES)."""
    return png_of(render_object(camera_at(EYES[side], size))[0].numpy())


def object_photo_jpeg(path: Path) -> Path:
    """A photo-like JPEG: the procedural object rendered from the front on a slightly noisy plain backdrop."""
    rgba = render_object(orbit_cameras(90.0, 0.0, 2.5, 40.0, 160, 120))[0].numpy()
    rng = np.random.default_rng(0)
    backdrop = 0.95 + rng.normal(0, 0.006, rgba.shape[:2] + (3,))
    img = rgba[..., :3] * rgba[..., 3:] + backdrop * (1 - rgba[..., 3:])
    Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path, quality=92)
    return path


def png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header says ``width`` x ``height`` with almost no data behind it."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
