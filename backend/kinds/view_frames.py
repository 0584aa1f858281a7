"""Extra views of a job: more photos of the object, each with its angles (``generate --view``).

A submit carries the main image as its first binary frame and one more frame
per extra view, with the angles in the options, in the same order::

    options["views"] = [{"azimuth": 180}, {"azimuth": 90, "polar": 80}, ...]

Degrees, relative to the main photo (azimuth 0): azimuth 90 is a photo from
the object's left, 180 from behind; polar is from straight above, 90 level,
the main photo's when absent (see ``mpod123.pipeline.extra_views``). The server checks the
list against the frames (count, at most :data:`MAX_VIEWS`, finite numbers in
range, a PNG/JPEG/WebP signature on each frame) before anything is stored, and
packs the frames into the job's one stored input: a job without views stores
its image exactly as before; one with views stores a small container (magic,
count, lengths, bytes) that the job function unpacks. So the store, the work
folder stamp, idempotent resubmits (same images, same angles) and the Ray
executor need no change, and the views are dropped with the image at the end.

Standard library only: the server imports it on its socket thread.
"""

from __future__ import annotations

import math
import struct
from typing import Any

MAX_VIEWS = 8
"""Extra views per job (``protocol.MAX_FRAMES`` leaves room for them)."""
CONTAINER_MAGIC = b"MPOD123-VIEWS\x00"
_COUNT = struct.Struct("<I")
_LENGTH = struct.Struct("<Q")
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


class ViewFramesError(ValueError):
    """Extra views that do not match their frames; ``hint`` says what to send."""

    hint = "send one binary frame per entry of options['views'] ({'azimuth': deg, 'polar': deg}), at most 8"


def is_image(data: bytes) -> bool:
    """A PNG, JPEG or WebP signature (the worker decodes and checks the rest)."""
    return data.startswith(IMAGE_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _angle(entry: dict, key: str, i: int, lo: float, hi: float, optional: bool, open_range: bool) -> float | None:
    value = entry.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ViewFramesError(f"views[{i}].{key} must be a number of degrees, got {value!r}")
    number = float(value)
    inside = lo < number < hi if open_range else lo <= number <= hi
    if not math.isfinite(number) or not inside:
        bounds = f"({lo:g}, {hi:g})" if open_range else f"[{lo:g}, {hi:g}]"
        raise ViewFramesError(f"views[{i}].{key} must be a finite number of degrees in {bounds}, got {value!r}")
    return number


def check_views(options: dict[str, Any], extra_frames: list[bytes]) -> list[dict[str, float | None]]:
    """The views' angles, checked against the extra frames; [] for a job without views."""
    views = options.get("views")
    if views is None:
        if extra_frames:
            raise ViewFramesError(f"{len(extra_frames)} extra binary frame(s) but no options['views'] giving their angles")
        return []
    if not isinstance(views, list):
        raise ViewFramesError("options['views'] must be a list of {'azimuth': deg, 'polar': deg}")
    if len(views) > MAX_VIEWS:
        raise ViewFramesError(f"{len(views)} extra views; at most {MAX_VIEWS} are accepted")
    if len(views) != len(extra_frames):
        raise ViewFramesError(f"options['views'] lists {len(views)} view(s) but the message has {len(extra_frames)} "
                              "extra binary frame(s); send one frame per view, in the same order")
    out = []
    for i, (entry, data) in enumerate(zip(views, extra_frames)):
        if not isinstance(entry, dict):
            raise ViewFramesError(f"views[{i}] must be an object like {{'azimuth': 180, 'polar': 90}}")
        unknown = set(entry) - {"azimuth", "polar"}
        if unknown:
            raise ViewFramesError(f"views[{i}] has unknown keys {sorted(unknown)}; only azimuth and polar")
        azimuth = _angle(entry, "azimuth", i, -360.0, 360.0, optional=False, open_range=False)
        polar = _angle(entry, "polar", i, 0.0, 180.0, optional=True, open_range=True)
        if not data:
            raise ViewFramesError(f"the frame of views[{i}] is empty; send the image file's bytes")
        if not is_image(data):
            raise ViewFramesError(f"the frame of views[{i}] is not a PNG, JPEG or WebP image")
        out.append({"azimuth": azimuth, "polar": polar})
    return out


def pack(image: bytes, extra_frames: list[bytes]) -> bytes:
    """The job's stored input: the image itself without views, else a container of all the frames."""
    if not extra_frames:
        return image
    frames = [image, *extra_frames]
    head = CONTAINER_MAGIC + _COUNT.pack(len(frames)) + b"".join(_LENGTH.pack(len(f)) for f in frames)
    return head + b"".join(frames)


def unpack(stored: bytes) -> tuple[bytes, list[bytes]]:
    """(main image, extra view frames) from :func:`pack`'s output."""
    if not stored.startswith(CONTAINER_MAGIC):
        return stored, []
    pos = len(CONTAINER_MAGIC)
    (count,) = _COUNT.unpack_from(stored, pos)
    if not 1 <= count <= MAX_VIEWS + 1:
        raise ViewFramesError(f"a damaged view container ({count} frames)")
    pos += _COUNT.size
    lengths = [_LENGTH.unpack_from(stored, pos + i * _LENGTH.size)[0] for i in range(count)]
    pos += count * _LENGTH.size
    if pos + sum(lengths) != len(stored):
        raise ViewFramesError("a damaged view container (its lengths do not add up)")
    frames = []
    for n in lengths:
        frames.append(stored[pos : pos + n])
        pos += n
    return frames[0], frames[1:]


def job_views(stored: bytes, options: dict[str, Any]) -> tuple[bytes, list]:
    """For the job function: (main image, ``mpod123.pipeline.extra_views.ViewSpec`` list) from the stored input."""
    from mpod123.pipeline.extra_views import ViewSpec  # the worker has mpod123; the server never calls this

    image, frames = unpack(stored)
    angles = check_views(options, frames)
    return image, [ViewSpec(data, a["azimuth"], a["polar"]) for data, a in zip(frames, angles)]


__all__ = ["MAX_VIEWS", "ViewFramesError", "check_views", "is_image", "job_views", "pack", "unpack"]
