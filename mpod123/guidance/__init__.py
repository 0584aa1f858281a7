"""Guidance: the interface stages call, and its implementations."""

from .base import CameraProposer, Guidance, GuidanceInput
from .multiview import MultiViewSupervision, over, resize_rgba

__all__ = ["CameraProposer", "Guidance", "GuidanceInput", "MultiViewSupervision", "over", "resize_rgba"]
