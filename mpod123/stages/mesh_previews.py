"""When a stage sends a live 3D preview, and what the previews cost it.

A stage that can show its surface implements ``preview_surface() -> (Mesh, colour
function) | None``; :class:`MeshPreviewer` calls it every ``mesh_preview.interval``
steps and at the stage's end, turns it into a small GLB
(:func:`mpod123.export.preview_mesh.preview_glb`), times the whole extraction and
emits a :class:`~mpod123.runtime.progress.MeshPreview`. The times are summed per stage
(:meth:`MeshPreviewer.stats`, written to run.json by the runner), so the
preview's share of a stage's wall time is on record for every run.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..runtime.progress import MeshPreview, emit

log = logging.getLogger(__name__)


class MeshPreviewer:
    """Emits a stage's mesh previews; one per stage object."""

    def __init__(self, stage: Any) -> None:
        self.stage = stage
        self.count = 0
        self.seconds = 0.0
        self.max_s = 0.0
        self.last_step: int | None = None

    @property
    def cfg(self):
        """The stage's MeshPreviewConfig while previews are wanted, else None: turned off, no
        listener (no callback), or every preview off (``preview_every = 0``, as benchmarks and
        tests that time the optimisation set it)."""
        stage = self.stage
        cfg = getattr(stage.cfg, "mesh_preview", None)
        if cfg is None or not cfg.enabled or stage.callback is None or not getattr(stage.cfg, "preview_every", 1):
            return None
        return cfg

    def due(self, total: int) -> bool:
        """Whether the step just finished is a preview step (not the last: :meth:`at_end` sends that)."""
        cfg, step = self.cfg, self.stage.step
        if cfg is None or step >= total:
            return False
        every = cfg.interval(total)
        return step % every == 0 and (self.last_step is None or step - self.last_step >= every)

    def maybe_emit(self, total: int) -> None:
        if self.due(total):
            self.emit()

    def at_end(self) -> None:
        cfg = self.cfg
        if cfg is not None and self.last_step != self.stage.step:
            self.emit()

    def emit(self) -> MeshPreview | None:
        """Extract, encode and send one preview now; None when the stage has no surface yet."""
        from ..export.preview_mesh import preview_glb

        cfg, stage = self.cfg, self.stage
        t0 = time.perf_counter()
        self.last_step = stage.step
        try:
            surface = stage.preview_surface()
            out = preview_glb(surface[0], surface[1], cfg.max_faces, cfg.max_bytes) if surface is not None else None
        except (RuntimeError, ValueError) as exc:  # a preview never fails the run
            log.warning("%s step %d: no mesh preview: %s", stage.name, stage.step, exc)
            out = None
        seconds = time.perf_counter() - t0
        self.count += 1
        self.seconds += seconds
        self.max_s = max(self.max_s, seconds)
        if out is None:
            log.info("%s step %d: no surface to preview yet", stage.name, stage.step)
            return None
        glb, mesh = out
        event = MeshPreview(stage.name, stage.step, glb, int(mesh.vertices.shape[0]), int(mesh.faces.shape[0]), seconds)
        emit(stage.callback, event)
        return event

    def stats(self) -> dict[str, float | int]:
        """Previews made, total and longest extraction time in seconds (for run.json)."""
        return {"count": self.count, "seconds": round(self.seconds, 4), "max_s": round(self.max_s, 4)}
