"""Events a stage reports, the callback type, and cooperative cancellation.

Pure Python on purpose: the CLI's progress bar, the backend's messages, the
Blender panel and the tests all consume these same events, and none of them
should need torch to do so. ``to_dict`` gives the JSON-ready form the backend
sends; a preview's PNG bytes (a mesh preview's GLB) travel separately as a binary frame.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol, Union


@dataclass(frozen=True)
class Progress:
    """One optimisation step finished."""

    stage: str
    step: int
    """Steps done so far in this stage (1-based after the first step)."""
    total: int
    losses: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0
    eta_s: float | None = None
    """Estimated seconds left in this stage, from the mean step time so far."""


@dataclass(frozen=True)
class Preview:
    """A preview image (PNG bytes), e.g. a turntable strip of the current model."""

    stage: str
    step: int
    png: bytes
    width: int
    height: int
    views: int = 1


@dataclass(frozen=True)
class MeshPreview:
    """A live 3D preview: the current shape as a small GLB (vertex colours in COLOR_0).

    ``seconds`` is what extracting and encoding it cost the stage (it runs on the training thread)."""

    stage: str
    step: int
    glb: bytes
    vertices: int
    faces: int
    seconds: float


@dataclass(frozen=True)
class StageDone:
    """A stage finished; ``checkpoint`` is where its final state was written, if anywhere."""

    stage: str
    steps: int
    seconds: float
    checkpoint: str | None = None


@dataclass(frozen=True)
class Result:
    """The run produced its output file."""

    path: str
    sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Event = Union[Progress, Preview, MeshPreview, StageDone, Result]


class ProgressCallback(Protocol):
    """Anything that accepts events. It must be quick: it runs on the training thread."""

    def __call__(self, event: Event) -> None: ...


def to_dict(event: Event) -> dict[str, Any]:
    """JSON-ready dict of an event with its kind; a preview's PNG (or GLB) is left out, its size kept."""
    data = dataclasses.asdict(event)
    data.pop("png", None)
    if "glb" in data:
        data["bytes"] = len(data.pop("glb"))
    data["kind"] = "preview_mesh" if isinstance(event, MeshPreview) else type(event).__name__.lower()
    return data


class Cancelled(Exception):
    """Raised inside a stage when its CancelToken is set; the stage leaves a consistent state."""


class CancelToken:
    """Cooperative cancellation, checked by the stages once per step. Thread-safe."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str = ""

    def cancel(self, reason: str = "cancelled") -> None:
        self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled(self.reason)


def emit(callback: ProgressCallback | None, event: Event) -> None:
    """Send an event to an optional callback."""
    if callback is not None:
        callback(event)
