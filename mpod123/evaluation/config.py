"""Settings of an evaluation run, and the error a missing model raises.

Light on purpose (dataclasses only): the CLI builds these before torch or
transformers are imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..runtime.errors import Mpod123Error

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
"""ViT-L/14, the backbone Magic123's and Make-it-3D's CLIP scores use (papers differ; it is always reported)."""

VGG19_FILE = "vgg19-dcbb9e9d.pth"
"""The file name of torchvision's ImageNet VGG19 weights, looked for in torch's hub checkpoint folder."""


@dataclass
class AlignConfig:
    """How ``mpod123 eval`` aligns a mesh to the reference (:mod:`mpod123.evaluation.alignment`)."""

    enabled: bool = True
    """Align before scoring. Off scores the mesh in the frame it comes in (``--no-align``)."""
    resolution: int = 128
    """Side of the silhouettes the IoU search compares (the scores are then taken at the render
    resolution): 192 found the same transform within 1% on the test object, at 1.5-4x the cost."""
    poor_iou: float = 0.85
    """Below this reference-view IoU after alignment, the report says the alignment is poor (the
    shapes differ, or the tool's front is not its +Z)."""
    max_evaluations: int = 120
    """Silhouette renders the IoU search may spend."""


@dataclass
class EvalConfig:
    """How a result is rendered and scored. Defaults follow the paper's evaluation (Table 1)."""

    views: int = 24
    """Turntable views, evenly spaced in azimuth from the reference. View 0 is the reference
    view (scored by PSNR, SSIM and IoU); views 1..N-1 are the novel views (CLIP, CX)."""
    resolution: int = 512
    """Render side in pixels: the paper scores 512x512 renders on white."""
    polar_deg: float = 90.0
    """Polar angle of the reference camera from +Y; the turntable stays at this elevation."""
    azimuth_deg: float = 0.0
    """Azimuth of the reference camera (0 = on +Z, the object's front)."""
    radius: float = 2.5
    """Camera distance, as in generation (CameraConfig.radius), so the reference view lines up."""
    fov_deg: float = 40.0
    """Vertical field of view, as in generation (CameraConfig.fov_deg)."""
    frame_reference: bool = True
    """Frame the reference image as the pipeline does (object centred, long side at 60%), so it
    matches the reference camera. Off for an input that is already a render from that camera."""
    clip_model: str = DEFAULT_CLIP
    """CLIP backbone: a hub id (read from the local cache, never downloaded here) or a local
    folder with a CLIPModel or CLIPVisionModelWithProjection (or a diffusers folder with an
    ``image_encoder`` subfolder)."""
    vgg_weights: str | None = None
    """VGG19 weights for CX (.pth or .safetensors with torchvision's names); None looks for
    torchvision's file in torch's hub checkpoint folder."""
    cx_bandwidth: float = 0.5
    """h in the contextual similarity's exp((1 - d~) / h): the paper's 0.5."""
    device: str = "auto"
    """auto (CUDA when torch sees it), cpu or cuda[:N]."""
    save_views: bool = True
    """Also write each turntable view as a PNG under ``views/``."""
    align: AlignConfig = field(default_factory=AlignConfig)
    """Scale and translate the mesh onto the reference's silhouette before scoring (another tool's
    mesh comes in its own frame; see :mod:`mpod123.evaluation.alignment`)."""


class WeightsUnavailable(Mpod123Error, RuntimeError):
    """A model needed by a metric cannot be loaded; the message says where it was looked for
    and which flag points at a local copy. The metric is reported as unavailable."""


class EvalInputError(Mpod123Error, ValueError):
    """A result or reference file that cannot be evaluated (bad GLB, unreadable image)."""
