"""Tiny random diffusion models built in code and saved in the real checkpoints' layouts.

Tests, ``serve --tiny`` and ``generate --tiny`` load them through exactly the
production ``from_pretrained`` path, so everything but the weights' values and
sizes is exercised without downloading anything. They produce noise, not
objects: the point is the machinery.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def save_tiny_zero123(root: Path, seed: int = 0) -> Path:
    """A zero123-diffusers folder: vae, image_encoder, unet (8 in-channels), clip_camera_projection, scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from mpod123.guidance.zero123 import CameraProjection

    torch.manual_seed(seed)
    dim = 32
    UNet2DConditionModel(
        sample_size=16, in_channels=8, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=dim, attention_head_dim=8, norm_num_groups=32,
    ).save_pretrained(root / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32,
    ).save_pretrained(root / "vae")
    CLIPVisionModelWithProjection(
        CLIPVisionConfig(hidden_size=dim, projection_dim=dim, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=37, image_size=32, patch_size=4)
    ).save_pretrained(root / "image_encoder")
    CameraProjection(embedding_dim=dim, additional_embeddings=4).save_pretrained(root / "clip_camera_projection")
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


def save_tiny_stable_diffusion(root: Path, seed: int = 0) -> Path:
    """A Stable Diffusion 1.x folder: tokenizer, text_encoder, unet (4 in-channels), vae and a PNDM scheduler
    config, as the real checkpoint ships it."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    dim = 32
    tokenizer = CLIPTokenizer.from_pretrained(save_tiny_clip_tokenizer(root / "_vocab"), model_max_length=77)
    tokenizer.save_pretrained(root / "tokenizer")
    CLIPTextModel(
        CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=dim, intermediate_size=37, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    ).save_pretrained(root / "text_encoder")
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=dim, attention_head_dim=8, norm_num_groups=32,
    ).save_pretrained(root / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
    ).save_pretrained(root / "vae")
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
