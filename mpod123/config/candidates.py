"""How text to 3D draws its candidate images: ``CandidateConfig``, reached from the command line as
``--set candidates.NAME=VALUE`` (``--candidates N`` is ``--set candidates.count=N``) and recorded in
run.json under ``"text"``. It is not part of :class:`~mpod123.config.schema.PipelineConfig` because only a
run from a prompt has candidates; the commands pass it to the overrides as an extra group."""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.errors import UsageError


@dataclass
class CandidateConfig:
    """How candidate images are drawn from a prompt."""

    count: int = 4
    """Candidates drawn (each about as costly as one SD image: seconds on a GPU)."""
    steps: int = 30
    """Denoising steps of DPM-Solver++ per candidate (25-30 is its usual quality plateau)."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale (SD 1.5's usual 7.5)."""
    size: int | None = None
    """Image side in pixels; None: the model's native size (512 for SD 1.5, 16 for the tiny model)."""
    suffix: str = (", a single whole object, centered, isolated on a plain white background, "
                   "full view, product photo, studio lighting, high detail")
    """Appended to the user's prompt: the object alone and whole on white is what the matting accepts."""
    negative_prompt: str = ("multiple objects, cropped, cut off, out of frame, scenery, landscape, room, "
                            "busy background, pattern background, shadow, text, watermark, frame, border, blurry")

    def validate(self) -> CandidateConfig:
        if not 1 <= self.count <= 16:
            raise UsageError(f"candidates must be between 1 and 16, got {self.count}")
        if not 1 <= self.steps <= 200:
            raise UsageError(f"candidate steps must be between 1 and 200, got {self.steps}")
        if not 0.0 <= self.guidance_scale <= 50.0:
            raise UsageError(f"the candidates' guidance scale must be between 0 and 50, got {self.guidance_scale}")
        if self.size is not None and not (8 <= self.size <= 1024 and self.size % 8 == 0):
            raise UsageError(f"the candidate size must be a multiple of 8 between 8 and 1024, got {self.size}")
        return self

    @classmethod
    def tiny(cls, count: int = 2) -> CandidateConfig:
        """For the tiny random models: their native 16 px and a few steps."""
        return cls(count=count, steps=4)


__all__ = ["CandidateConfig"]
