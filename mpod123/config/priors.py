"""The priors' settings: Zero-1-to-3 (stage 1), Stable Diffusion with DAI (stage 2) and the
textual inversion of ``<e>``. Re-exported by :mod:`.schema` and :mod:`mpod123.config`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class Zero123Config:
    """Zero-1-to-3 score distillation, stage 1's prior (defaults: Magic123's)."""

    model: str = "ashawkey/zero123-xl-diffusers"
    """Hub id or local folder in the diffusers layout."""
    variant: Literal["zero123", "stable-zero123"] = "zero123"
    guidance_scale: float = 5.0
    t_min: float = 0.2
    t_max_start: float = 0.98
    """Upper end of the timestep range at step 0; it anneals linearly to ``t_max``."""
    t_max: float = 0.6
    anneal_steps: int = 2500
    weight: float = 1.0
    """Weight of the SDS loss."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """auto: float16 on CUDA, float32 on the CPU."""
    seed: int = 0
    """With the stage and the step, seeds the SDS draw of t and noise (set by ``with_seed``)."""


@dataclass
class StableDiffusionConfig:
    """Stable Diffusion SDS with DAI, stage 2's prior (defaults: Magic123's DMTet stage)."""

    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    """Hub id or local folder in the diffusers layout (tokenizer, text_encoder, unet, vae, scheduler)."""
    prompt: str = "A high-resolution DSLR image of <e>"
    """The DAI prompt; it must contain ``token``."""
    negative_prompt: str = ""
    """Text of the unconditional branch of classifier-free guidance."""
    token: str = "<e>"
    """The textual-inversion placeholder."""
    guidance_scale: float = 100.0
    """Magic123's SD guidance scale for the 2D prior (it writes s + 1 in its own CFG form)."""
    t_min: float = 0.02
    t_max: float = 0.5
    """Timestep range of the detail stage (Magic123's DMTet stage: [0.02, 0.5])."""
    image_size: int | None = None
    """Renders are resized to this before the VAE (1024 -> 512 in the paper); None: the model's native size."""
    mrca: bool = True
    """Mask Rectified Cross-Attention: keep ``token`` inside the stage-1 outline."""
    weight: float = 0.1
    """Weight of the SDS loss. The paper gives no stage-2 loss weights. Against a reference RGB
    weight of 1000 (ours), Magic123's DMTet stage (SD 1e-3 against RGB 5) would be 0.2 and
    threestudio's released magic123-refine-sd config (SD 0.025 against RGB 1000) 0.025; 0.1 lies
    between (it was 1.0). An SD : RGB : normal consistency of 1e-3 : 10 : 100 appears only on an
    unreleased threestudio branch, not in a config it ships."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """auto: float16 on CUDA, float32 on the CPU."""
    seed: int = 0
    """With the stage and the step, seeds the SDS draw of t and noise (set by ``with_seed``)."""


@dataclass
class TextualInversionConfig:
    """Learning the embedding of ``<e>`` from the reference image (everything else frozen)."""

    steps: int = 500
    """Optimisation steps. Magic123 runs 3000 at batch 16 (about 2 h on a V100, with a VAE encode
    of every crop); cached latents of the augmentations and a single trainable vector make each
    step cheap. The ``paper`` preset runs Magic123's 3000 x 16 on fresh augmentations."""
    batch_size: int = 4
    lr: float = 5e-3
    """Adam learning rate of the one trainable embedding vector."""
    resolution: int | None = None
    """Size of the augmented crops fed to the VAE; None: the model's native size (512 for SD 1.5)."""
    augmentations: int = 64
    """Random augmentations of the reference, encoded once and sampled each step (a fixed pool;
    ignored with ``fresh_augmentations``)."""
    fresh_augmentations: bool = False
    """Draw and encode ``batch_size`` new augmentations every step, as Magic123 and diffusers'
    textual_inversion.py do, instead of sampling the fixed pool: the embedding never sees the
    same crop twice, at the cost of a VAE encode per crop per step (512^2, a fifth to a third of
    a UNet forward-backward). False: the pool of ``augmentations`` (64 crops: an overfitting risk
    past a few hundred steps of batch 8). With extra views (``generate --view``) the pool over
    every view is used either way."""
    init_token: str = "object"
    """The new embedding starts from this word's embedding (its first token). Magic123's script
    and diffusers' textual_inversion.py require a word naming the object (e.g. "shoe"); the photo
    is unlabelled here, so the neutral "object" is the default: ``--set inversion.init_token=shoe``
    gives a closer start."""
    templates: tuple[str, ...] = (
        "a photo of a {}",
        "a rendering of a {}",
        "a cropped photo of the {}",
        "a close-up photo of a {}",
        "a bright photo of the {}",
        "a good photo of a {}",
        "a DSLR image of {}",
        "a high-resolution DSLR image of {}",
    )
    """Caption templates; ``{}`` is replaced by the token."""
    seed: int = 0
    loss_scale: float | None = None
    """Constant factor on the loss before backward. The mean over B*4*64*64 latents makes the
    gradients inside an fp16 UNet subnormal (below 6e-5); diffusers' script uses a GradScaler.
    Adam is invariant to a constant gradient scale, so a fixed factor suffices. None: 1024 when
    the UNet runs in fp16 or bf16, 1 in fp32."""
