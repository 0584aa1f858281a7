"""Small image helpers shared by previews, contact sheets and benchmarks (numpy + Pillow)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] to uint8, rounding to nearest."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an (H, W, 3|4) float image in [0, 1] as PNG."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, format="PNG")
    return buf.getvalue()


def grid_image(rows: list[list[np.ndarray]], pad: int = 2, fill: float = 1.0) -> np.ndarray:
    """Tile equally sized (H, W, 3) images into rows and columns with ``pad`` pixels between."""
    h, w = rows[0][0].shape[:2]
    n_cols = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) - pad, n_cols * (w + pad) - pad, 3), fill, dtype=np.float32)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            out[i * (h + pad) : i * (h + pad) + h, j * (w + pad) : j * (w + pad) + w] = img[..., :3]
    return out
