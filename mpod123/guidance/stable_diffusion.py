"""Stable Diffusion SDS with Detail Appearance Inpainting (DAI), stage 2's prior.

The detail stage's renders (1024² in the paper) are resized to 512² and
encoded; the noise residual comes from Stable Diffusion conditioned on
"A high-resolution DSLR image of <e>", where `<e>` is the textual-inversion
token learned from the reference image (:mod:`.textual_inversion`). Mask
Rectified Cross-Attention (:mod:`.mrca`) keeps `<e>`'s attention inside the
stage-1 outline of the same camera, which the stage hands over in
``GuidanceInput.masks``.

Loading is shared with textual inversion (:func:`load_stable_diffusion`), so
the UNet and text encoder are loaded once per run; the VAE's decoder is
dropped, since SDS never decodes.

CFG: the usual ε_u + s (ε_c - ε_u) over one batched UNet call [cond, uncond],
which is the order MRCA's ``conditional="first_half"`` expects. Magic123 writes
the same rule as ε_c + s' (ε_c - ε_u), i.e. s = s' + 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import StableDiffusionConfig
from .base import GuidanceInput
from .mrca import MaskState, find_token_indices, install_mrca, uninstall_mrca
from .sds import ScoreDistillation, load_component, resolve_dtype

SWITCH = "StableDiffusionConfig.model (CLI: --sd)"


@dataclass
class StableDiffusionModels:
    """The frozen pieces of a Stable Diffusion checkpoint, loaded once per run."""

    tokenizer: object
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler: object
    dtype: torch.dtype
    device: torch.device
    source: str

    @property
    def native_size(self) -> int:
        """The image size the UNet was trained at (512 for SD 1.5)."""
        return self.unet.config.sample_size * 2 ** (len(self.vae.config.block_out_channels) - 1)


def load_stable_diffusion(source: str, device: torch.device | str = "cpu", dtype: str = "auto") -> StableDiffusionModels:
    """Tokenizer, text encoder (float32: it is small and textual inversion trains through it),
    UNet and VAE encoder (in ``dtype``) and a DDIM scheduler from a diffusers folder or hub id."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    device = torch.device(device)
    torch_dtype = resolve_dtype(dtype, device)
    tokenizer = load_component(CLIPTokenizer, source, "tokenizer", None, "Stable Diffusion", SWITCH)
    text_encoder = load_component(CLIPTextModel, source, "text_encoder", torch.float32, "Stable Diffusion", SWITCH)
    unet = load_component(UNet2DConditionModel, source, "unet", torch_dtype, "Stable Diffusion", SWITCH)
    vae = load_component(AutoencoderKL, source, "vae", torch_dtype, "Stable Diffusion", SWITCH)
    # the checkpoint ships a PNDM config; DDIM reads the same betas and gives add_noise
    scheduler = load_component(DDIMScheduler, source, "scheduler", None, "Stable Diffusion", SWITCH)
    vae.decoder = None
    for module in (text_encoder, unet, vae):
        module.requires_grad_(False)
        module.to(device).eval()
    return StableDiffusionModels(tokenizer, text_encoder, unet, vae, scheduler, torch_dtype, device, source)


class StableDiffusionGuidance(ScoreDistillation):
    """SDS from Stable Diffusion with the `<e>` prompt and MRCA (implements :class:`Guidance`).

    The tokenizer and text encoder must already know ``cfg.token``
    (:func:`~mpod123.guidance.textual_inversion.add_token`).
    """

    def __init__(self, cfg: StableDiffusionConfig, models: StableDiffusionModels) -> None:
        self.cfg = cfg
        self.seed, self.stream = cfg.seed, "stable_diffusion"
        self.models = models
        self.device, self.dtype = models.device, models.dtype
        self.vae, self.unet = models.vae, models.unet
        self._init_schedule(models.scheduler)
        self.image_size = cfg.image_size or models.native_size
        self.latent_size = self.image_size // 2 ** (len(self.vae.config.block_out_channels) - 1)
        tokenizer = models.tokenizer
        self.token_indices = find_token_indices(tokenizer, cfg.prompt, cfg.token)
        with torch.no_grad():
            self.text_cond = self.embed(cfg.prompt)
            self.text_uncond = self.embed(cfg.negative_prompt)
        self.mask_state = MaskState(token_indices=self.token_indices, conditional="first_half")
        self.mrca_layers = install_mrca(self.unet, self.mask_state) if cfg.mrca else []

    def close(self) -> None:
        """Give the UNet its stock attention processors back."""
        if self.mrca_layers:
            uninstall_mrca(self.unet)
            self.mrca_layers = []

    def embed(self, text: str) -> Tensor:
        """(1, L, D) text-encoder hidden states of ``text``, padded to the tokenizer's length."""
        tok = self.models.tokenizer
        ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        return self.models.text_encoder(ids.input_ids.to(self.device))[0].to(self.dtype)

    def latent_masks(self, masks: Tensor | None) -> Tensor | None:
        """Stage-1 masks (B, H, W, 1) to the latent grid (B, 1, h, w); MRCA resizes them per layer."""
        if masks is None:
            return None
        m = masks.permute(0, 3, 1, 2).float()
        m = F.interpolate(m, size=(self.latent_size, self.latent_size), mode="area")
        return (m >= 0.5).float()

    @torch.no_grad()
    def predict_noise(self, noisy: Tensor, t: Tensor) -> Tensor:
        """CFG noise prediction: one batched UNet call over [conditional, unconditional]."""
        b = noisy.shape[0]
        hidden = torch.cat([self.text_cond.expand(b, -1, -1), self.text_uncond.expand(b, -1, -1)], 0)
        eps = self.unet(torch.cat([noisy, noisy], 0), torch.cat([t, t]), encoder_hidden_states=hidden).sample
        eps_cond, eps_uncond = eps[:b], eps[b:]
        return eps_uncond + self.cfg.guidance_scale * (eps_cond - eps_uncond)

    def __call__(self, inp: GuidanceInput) -> dict[str, Tensor]:
        latents = self.encode(inp.rgb).float()  # resized in float32, cast right before the VAE
        t, noise = self.draw(inp.step, latents.shape, self.cfg.t_min, self.cfg.t_max)
        self.mask_state.mask = self.latent_masks(inp.masks) if self.cfg.mrca else None
        try:
            grad = self.sds_grad(latents, t, noise)
        finally:
            self.mask_state.mask = None
        return {"sds_dai": self.cfg.weight * self.sds_loss(latents, grad)}


__all__ = ["StableDiffusionGuidance", "StableDiffusionModels", "load_stable_diffusion"]
