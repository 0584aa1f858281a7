"""The stages of MPOD123: stage 1 (outline, a NeRF) and stage 2 (detail, a textured DMTet mesh)."""

from .base import CheckpointError, OptimisationStage, ReferenceView, is_reference_step
from .detail import DetailStage
from .outline import OutlineStage

__all__ = ["CheckpointError", "DetailStage", "OptimisationStage", "OutlineStage", "ReferenceView", "is_reference_step"]
