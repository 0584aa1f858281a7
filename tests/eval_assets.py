"""Evaluation inputs made in code: the procedural object as a GLB and as a reference cut-out, and tiny random
CLIP and VGG weights in the real layouts (the evaluation tests and the eval-set tests share them)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from mpod123.bench.synthetic import object_albedo, object_mesh, render_object
from mpod123.camera import orbit_cameras
from mpod123.evaluation.vgg import VGG19Features

TINY_VGG_WIDTHS = (8, 16, 16, 32, 32)


def write_object_glb(path, resolution: int = 32, texture_size: int = 512):
    """The procedural test object, UV-unwrapped with its albedo baked, as our exporter writes it."""
    from mpod123.config import ExportConfig
    from mpod123.export import export_mesh

    export_mesh(object_mesh(resolution), object_albedo, path, ExportConfig(texture_size=texture_size, uv_backend="torch", obj=False))
    return path


def write_reference_png(path, size: int, azimuth: float = 0.0):
    """The exact (ray-traced) object from an orbit camera, as an RGBA cut-out."""
    rgba = render_object(orbit_cameras(90.0, azimuth, 2.5, 40.0, size))[0].numpy()
    Image.fromarray((np.clip(rgba, 0, 1) * 255 + 0.5).astype(np.uint8), "RGBA").save(path)
    return path


def save_tiny_clip(folder):
    """A random CLIPModel with the real layout, a few kB, saved as a hub folder."""
    from transformers import CLIPConfig, CLIPModel

    common = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    cfg = CLIPConfig(
        text_config=dict(common, vocab_size=99, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(common, image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(folder)
    return folder


def save_tiny_vgg(path):
    """A narrow VGG19 with torchvision's key names (plus a classifier key, as torchvision's file has)."""
    torch.manual_seed(0)
    state = VGG19Features(TINY_VGG_WIDTHS).state_dict()
    state["classifier.0.weight"] = torch.zeros(2, 2)
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path
