"""Tiny random diffusion models built in code and saved in the real checkpoints' layouts.

Tests, ``serve --tiny`` and ``generate --tiny`` load them through exactly the
production ``from_pretrained`` path, so everything but the weights' values and
sizes is exercised without downloading anything. They produce noise, not
objects: the point is the machinery.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class ModelSize:
    """The shapes of the random models: tiny for tests, or the real checkpoints' for benchmarks."""

    unet_channels: tuple[int, ...]
    unet_layers: int
    unet_sample: int
    """Latent side: 64 for SD 1.5 (512²), 32 for Zero123 (256²)."""
    cross_dim: int
    vae_channels: tuple[int, ...]
    vae_layers: int
    text_layers: int
    text_heads: int
    text_ffn: int
    text_vocab: int | None
    """None: the tokenizer's size; 49408 for the real CLIP text encoder."""
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_ffn: int
    vision_image: int
    vision_patch: int


TINY = ModelSize((32, 64), 1, 16, 32, (32, 64), 1, 2, 4, 37, None, 32, 2, 4, 37, 32, 4)
FULL = ModelSize((320, 640, 1280, 1280), 2, 64, 768, (128, 256, 512, 512), 2, 12, 12, 3072, 49408, 1024, 24, 16, 4096, 224, 14)
"""SD 1.5's UNet/VAE/text encoder and Zero123-XL's (its UNet at 32² latents, CLIP ViT-L/14 image encoder)."""


def _unet(size: ModelSize, in_channels: int, sample: int):
    from diffusers import UNet2DConditionModel

    n = len(size.unet_channels)
    return UNet2DConditionModel(
        sample_size=sample, in_channels=in_channels, out_channels=4, layers_per_block=size.unet_layers,
        block_out_channels=size.unet_channels, down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1), cross_attention_dim=size.cross_dim,
        attention_head_dim=8, norm_num_groups=32,
    )


def _vae(size: ModelSize):
    from diffusers import AutoencoderKL

    n = len(size.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=size.vae_channels,
        layers_per_block=size.vae_layers, norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, sample_size=size.unet_sample * 2 ** (n - 1),
    )


def _save(model, folder: Path, dtype: torch.dtype | None) -> None:
    """Save in the real layout, without transformers' "Writing model shards" bar: a tiny model is written in
    milliseconds, and the bar would land in the user's terminal (or in front of an error message)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        (model.to(dtype) if dtype is not None else model).save_pretrained(folder)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _save_camera_projection(folder: Path, dim: int, dtype: torch.dtype | None) -> None:
    """``clip_camera_projection`` as the real checkpoints have it, written from its layout rather than through
    our class (the runtime layer imports no guidance): the config of the zero123 pipeline's
    ``CLIPCameraProjection`` and one ``proj`` Linear(dim + 4 -> dim). The loader's own
    :class:`~mpod123.guidance.zero123.CameraProjection` must read it, as it reads the published ones."""
    from safetensors.torch import save_file

    proj = torch.nn.Linear(dim + 4, dim)  # the same draw from the seeded generator as the class's own Linear
    tensors = {f"proj.{k}": (v.to(dtype) if dtype is not None else v).contiguous() for k, v in proj.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    config = {"_class_name": "CLIPCameraProjection", "_diffusers_version": "0.16.0", "embedding_dim": dim,
              "additional_embeddings": 4}
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def save_tiny_zero123(root: Path, seed: int = 0, size: ModelSize = TINY, dtype: torch.dtype | None = None) -> Path:
    """A zero123-diffusers folder: vae, image_encoder, unet (8 in-channels), clip_camera_projection, scheduler."""
    from diffusers import DDIMScheduler
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    latent = size.unet_sample if size is TINY else size.unet_sample // 2  # Zero123 works at 256²
    _save(_unet(size, 8, latent), root / "unet", dtype)
    _save(_vae(size), root / "vae", dtype)
    vision = CLIPVisionConfig(
        hidden_size=size.vision_hidden, projection_dim=size.cross_dim, num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads, intermediate_size=size.vision_ffn, image_size=size.vision_image,
        patch_size=size.vision_patch,
    )
    _save(CLIPVisionModelWithProjection(vision), root / "image_encoder", dtype)
    _save_camera_projection(root / "clip_camera_projection", size.cross_dim, dtype)
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False).save_pretrained(
        root / "scheduler"
    )
    (root / "model_index.json").write_text(json.dumps({"_class_name": "Zero1to3StableDiffusionPipeline"}))
    return root


def save_tiny_clip_tokenizer(root: Path) -> Path:
    """A CLIPTokenizer written offline: characters only (no merges), plus CLIP's special tokens."""
    import string

    root.mkdir(parents=True, exist_ok=True)
    symbols = list(string.ascii_lowercase + string.digits + "-.,!?'")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in symbols:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    return root


def save_tiny_stable_diffusion(root: Path, seed: int = 0, size: ModelSize = TINY, dtype: torch.dtype | None = None) -> Path:
    """A Stable Diffusion 1.x folder: tokenizer, text_encoder, unet (4 in-channels), vae and a PNDM scheduler
    config, as the real checkpoint ships it. The tokenizer is always the tiny character one (a
    tokenizer's size does not change the compute); with ``FULL`` the text encoder has CLIP's vocabulary."""
    from diffusers import PNDMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(save_tiny_clip_tokenizer(root / "_vocab"), model_max_length=77)
    tokenizer.save_pretrained(root / "tokenizer")
    text = CLIPTextConfig(
        vocab_size=size.text_vocab or len(tokenizer), hidden_size=size.cross_dim, intermediate_size=size.text_ffn,
        num_hidden_layers=size.text_layers, num_attention_heads=size.text_heads, max_position_embeddings=77,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    _save(CLIPTextModel(text), root / "text_encoder", None)
    _save(_unet(size, 4, size.unet_sample // 2 if size is TINY else size.unet_sample), root / "unet", dtype)
    _save(_vae(size), root / "vae", dtype)
    PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True).save_pretrained(
        root / "scheduler"
    )
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return root


def ensure_tiny_models(root: str | Path) -> dict[str, Path]:
    """Tiny Zero123 and Stable Diffusion folders under ``root``, made once and reused.

    Each is built in a temporary folder and renamed into place, so concurrent
    workers never load a half-written model.
    """
    import os
    import shutil
    import tempfile

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    made = {}
    for name, build in (("zero123", save_tiny_zero123), ("sd", save_tiny_stable_diffusion)):
        final = root / name
        if not (final / "model_index.json").is_file():
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
            build(tmp)
            try:
                os.rename(tmp, final)
            except OSError:  # another process got there first
                shutil.rmtree(tmp, ignore_errors=True)
        made[name] = final
    return made
