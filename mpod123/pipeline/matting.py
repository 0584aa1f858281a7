"""Connected parts of a matte, and how far to trust a segmentation model's matte.

A segmentation model (``rembg``) returns a clean, decided alpha for almost any
image, so the share of decided pixels says nothing about whether the image
shows one whole object: a cropped object or two objects side by side come out
just as crisp. The confidence here measures what the plain-background matting
(:func:`mpod123.pipeline.preprocess.matting_confidence`) measures, with the
same thresholds, on the matte itself, plus holes: whether the object touches
the border (cropped), fills the frame, is one piece, is free of large holes,
and has a clear edge. Text to 3D picks its candidate by it.
"""

from __future__ import annotations

import numpy as np

REASONS = {
    "border": "the border is not a uniform colour",
    "contact": "the object touches the image border",
    "fill": "the object fills most of the image",
    "compact": "the foreground is in many pieces",
    "holes": "the object has large holes",
    "clear": "the cut between object and background is unclear",
}
"""Why a matte is refused, by its weakest score."""

HOLE_FREE, HOLE_REFUSED = 0.10, 0.35
"""Holes (background enclosed by the object) as a share of its filled silhouette: up to 10% scores 1
(a handle, a gap between legs), 35% or more scores 0 (the matte cut away much of the object)."""


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected labels (0 = background, 1..n) of a boolean image, by two-pass union-find."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int64)
    parent = [0]

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    # run-length pass per row: each horizontal run gets a label, merged with the runs above it
    prev_runs: list[tuple[int, int, int]] = []
    for y in range(h):
        row = mask[y]
        padded = np.concatenate([[False], row, [False]])
        edges = np.flatnonzero(padded[1:] != padded[:-1])
        runs = []
        for start, end in zip(edges[::2], edges[1::2]):
            label = len(parent)
            parent.append(label)
            for ps, pe, pl in prev_runs:
                if ps < end and start < pe:  # overlapping columns: 4-connected
                    a, b = find(label), find(pl)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
            runs.append((start, end, label))
            labels[y, start:end] = label
        prev_runs = runs
    roots = np.array([find(i) for i in range(len(parent))], dtype=np.int64)
    unique, compact = np.unique(roots, return_inverse=True)
    compact = compact.astype(np.int64)  # roots[0] == 0 stays 0
    return compact[labels], len(unique) - 1


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = connected_components(mask)
    if n == 0:
        return mask
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    counts[0] = 0
    return labels == int(np.argmax(counts))


def fill_small_holes(mask: np.ndarray, max_fraction: float = 0.001) -> np.ndarray:
    """Fill background islands not touching the border and smaller than ``max_fraction`` of the image."""
    labels, n = connected_components(~mask)
    if n == 0:
        return mask
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    touching = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    small = counts <= max_fraction * mask.size
    small[touching] = False
    small[0] = False
    return mask | small[labels]


def model_matte_confidence(alpha: np.ndarray, cfg) -> tuple[float, dict[str, float]]:
    """How far to trust a model's matte (H, W) in [0, 1]: 0..1 and the measurements behind it.

    The weakest of five scores, each with the plain-background matte's threshold where both have one:
    ``contact`` (the outermost ring of pixels covered, 5% scores 0), ``fill`` (above 80% of the image
    scores 0), ``compact`` (the largest part's share of the foreground, 60% scores 0), ``holes``
    (:data:`HOLE_FREE`, :data:`HOLE_REFUSED`) and ``clear`` (undecided pixels, alpha in (0.1, 0.9), per
    pixel of the object's edge: an antialiased cut leaves one or two)."""
    core = alpha > 0.5
    h, w = core.shape
    area = int(core.sum())
    if area == 0:
        return 0.0, {"object_fraction": 0.0, "score_fill": 0.0}
    kept = largest_component(core)
    solid = fill_small_holes(kept)
    labels, n = connected_components(~solid)
    touching = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    enclosed = (labels > 0) & ~np.isin(labels, touching)
    filled = int(solid.sum()) + int(enclosed.sum())
    inner = kept.copy()  # erode by one pixel: the object's edge is kept minus its interior
    inner[1:] &= kept[:-1]
    inner[:-1] &= kept[1:]
    inner[:, 1:] &= kept[:, :-1]
    inner[:, :-1] &= kept[:, 1:]
    edge = max(1, int((kept & ~inner).sum()))
    ring = np.concatenate([core[0], core[-1], core[:, 0], core[:, -1]])
    details = {
        "border_contact": float(ring.mean()),
        "object_fraction": float(area / (h * w)),
        "kept_fraction": float(kept.sum() / area),
        "hole_fraction": float(enclosed.sum() / max(1, filled)),
        "unclear_per_edge_pixel": float(((alpha > 0.1) & (alpha < 0.9)).sum() / edge),
    }
    scores = {
        "contact": 1.0 - details["border_contact"] / 0.05,
        "fill": (0.8 - details["object_fraction"]) / 0.2,
        "compact": (details["kept_fraction"] - 0.6) / 0.3,
        "holes": (HOLE_REFUSED - details["hole_fraction"]) / (HOLE_REFUSED - HOLE_FREE),
        "clear": 1.0 - (details["unclear_per_edge_pixel"] - 2.0) / 6.0,
    }
    scores = {k: float(np.clip(v, 0.0, 1.0)) for k, v in scores.items()}
    details.update({f"score_{k}": v for k, v in scores.items()})
    return min(scores.values()), details


__all__ = ["REASONS", "connected_components", "fill_small_holes", "largest_component", "model_matte_confidence"]
