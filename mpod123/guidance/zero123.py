"""Zero-1-to-3 score distillation (stage 1's prior).

Components, loaded from a diffusers-format folder or hub id (the zero123-xl and
stable-zero123 layouts): ``vae`` (AutoencoderKL), ``image_encoder``
(CLIPVisionModelWithProjection), ``unet`` (UNet2DConditionModel with 8 input
channels), ``clip_camera_projection`` (a Linear(768 + 4 -> 768), our own
:class:`CameraProjection`, so no remote code is needed) and ``scheduler``.

Conventions, the classic silent bugs:

* **Camera.** The relative camera is [Δpolar (rad), sin Δaz, cos Δaz, Δradius]
  with Δ = target - conditioning. Zero123's training renders measure azimuth
  as atan2(y, x) in Blender's Z-up world, counter-clockwise seen from above.
  Our world maps to Blender's by the proper rotation (x, y, z) -> (x, -z, y),
  under which our azimuth (from +Z towards +X) is Blender's azimuth minus 90°,
  so the two increase together: Δaz is our φ_target - φ_cond, with sin(+Δaz).
  Polar angles are measured from the up axis in both worlds. Stable Zero123
  replaces Δradius with the conditioning view's absolute polar angle (rad).
* **Conditioning latents.** The reference image's VAE posterior *mode*,
  unscaled (the scaled latents divided by the VAE scaling factor), concatenated
  to the noisy latents along the channels.
* **CLIP preprocessing.** OpenAI's: bicubic resize to the encoder's size
  without antialiasing, then CLIP's mean/std, not CLIPImageProcessor's.
* **CFG.** The unconditional branch has zero embeddings *and* zero latents;
  both branches go through the UNet in one batched call.
* **SDS.** w(t) = 1 - ᾱ_t, grad = w (ε̂ - ε) on the latents of the render
  (resized to the model's image size, encoded with the posterior mode). The
  loss is 0.5 ||z - sg(z - grad)||² per view, whose gradient with respect to z
  is exactly grad. The timestep range anneals linearly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn
from transformers import CLIPVisionModelWithProjection

from ..camera import Cameras
from ..config import Zero123Config
from .base import GuidanceInput
from .sds import ModelNotFound, ScoreDistillation, load_component, resolve_dtype

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CameraProjection(ModelMixin, ConfigMixin):
    """Zero123's ``clip_camera_projection``: image embedding + 4 camera numbers -> embedding."""

    @register_to_config
    def __init__(self, embedding_dim: int = 768, additional_embeddings: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(embedding_dim + additional_embeddings, embedding_dim)

    def forward(self, embedding: Tensor) -> Tensor:
        return self.proj(embedding)


def relative_camera(target: Cameras, cond: Cameras, variant: str = "zero123") -> Tensor:
    """(B, 4) camera conditioning of ``target`` views relative to the conditioning view (see the module doc)."""
    d_polar = target.polar - cond.polar
    d_az = target.azimuth - cond.azimuth
    last = target.radius - cond.radius if variant == "zero123" else cond.polar.expand_as(d_polar)
    return torch.stack([d_polar, torch.sin(d_az), torch.cos(d_az), last], dim=-1)


def clip_preprocess(images: Tensor, size: int) -> Tensor:
    """(B, H, W, 3) in [0, 1] -> (B, 3, size, size) normalised as OpenAI's CLIP was trained."""
    x = F.interpolate(images.permute(0, 3, 1, 2), size=(size, size), mode="bicubic", align_corners=False, antialias=False)
    mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype)[:, None, None]
    std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype)[:, None, None]
    return (x.clamp(0, 1) - mean) / std


def _load(cls, source: str, subfolder: str, dtype: torch.dtype | None):
    return load_component(cls, source, subfolder, dtype, "Zero123", "Zero123Config.model (CLI: --zero123)")


class Zero123Guidance(ScoreDistillation):
    """SDS from Zero-1-to-3 conditioned on the reference view (implements :class:`Guidance`)."""

    def __init__(
        self, cfg: Zero123Config, reference_rgb: Tensor, reference_camera: Cameras, device: torch.device | str = "cpu"
    ) -> None:
        """``reference_rgb``: (H, W, 3) in [0, 1] on a white background; ``reference_camera``: its camera."""
        self.cfg = cfg
        self.seed, self.stream = cfg.seed, "zero123"
        self.device = torch.device(device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        src = cfg.model
        self.vae = _load(AutoencoderKL, src, "vae", self.dtype)
        self.vae.decoder = None  # never decoded: it never reaches the device
        self.vae.to(self.device).eval()
        self.image_encoder = _load(CLIPVisionModelWithProjection, src, "image_encoder", self.dtype).to(self.device).eval()
        self.unet = _load(UNet2DConditionModel, src, "unet", self.dtype).to(self.device).eval()
        self.projection = _load(CameraProjection, src, "clip_camera_projection", self.dtype).to(self.device).eval()
        self._init_schedule(_load(DDIMScheduler, src, "scheduler", None))
        for module in (self.vae, self.image_encoder, self.unet, self.projection):
            module.requires_grad_(False)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_size = self.unet.config.sample_size * self.vae_scale
        self.reference_camera = reference_camera.to(self.device)
        with torch.no_grad():
            ref = reference_rgb[None].float()
            if ref.shape[1] > self.image_size or ref.shape[2] > self.image_size:
                # the reference is kept at the photo's resolution: area-downsample it to the model's
                # size first (CLIP's bicubic 224 resize has no antialiasing)
                ref = F.interpolate(ref.permute(0, 3, 1, 2), size=(self.image_size, self.image_size), mode="area")
                ref = ref.permute(0, 2, 3, 1)
            ref = ref.to(self.device, self.dtype)
            clip_in = clip_preprocess(ref.float(), self.image_encoder.config.image_size).to(self.dtype)
            self.reference_embedding = self.image_encoder(pixel_values=clip_in).image_embeds  # (1, D)
            self.reference_latents = self.encode(ref, mode=True, scaled=False).to(self.dtype)  # posterior mode, unscaled

    # ---------------------------------------------------------------- pieces
    def conditioning(self, cameras: Cameras) -> tuple[Tensor, Tensor]:
        """(embeddings (B, 1, D), concat latents (B, 4, h, w)) for the conditional branch."""
        cam = relative_camera(cameras.to(self.device), self.reference_camera, self.cfg.variant).to(self.dtype)
        emb = self.reference_embedding.expand(len(cameras), -1)
        tokens = self.projection(torch.cat([emb, cam], dim=-1))[:, None, :]
        return tokens, self.reference_latents.expand(len(cameras), -1, -1, -1)

    def t_range(self, step: int) -> tuple[float, float]:
        frac = min(1.0, step / max(1, self.cfg.anneal_steps))
        t_max = self.cfg.t_max_start + (self.cfg.t_max - self.cfg.t_max_start) * frac
        return self.cfg.t_min, max(self.cfg.t_min, t_max)

    @torch.no_grad()
    def predict_noise(self, noisy: Tensor, t: Tensor, cameras: Cameras) -> Tensor:
        """CFG noise prediction: one batched UNet call over [conditional, unconditional]."""
        tokens, cond_latents = self.conditioning(cameras)
        b = noisy.shape[0]
        latent_in = torch.cat([noisy, noisy], 0)
        concat = torch.cat([cond_latents, torch.zeros_like(cond_latents)], 0)
        hidden = torch.cat([tokens, torch.zeros_like(tokens)], 0)
        eps = self.unet(torch.cat([latent_in, concat], dim=1), torch.cat([t, t]), encoder_hidden_states=hidden).sample
        eps_cond, eps_uncond = eps[:b], eps[b:]
        return eps_uncond + self.cfg.guidance_scale * (eps_cond - eps_uncond)

    def __call__(self, inp: GuidanceInput) -> dict[str, Tensor]:
        latents = self.encode(inp.rgb).float()  # resized in float32, cast right before the VAE
        t, noise = self.draw(inp.step, latents.shape, *self.t_range(inp.step))
        grad = self.sds_grad(latents, t, noise, inp.cameras)
        return {"sds_zero123": self.cfg.weight * self.sds_loss(latents, grad)}


__all__ = ["CameraProjection", "ModelNotFound", "Zero123Config", "Zero123Guidance", "clip_preprocess", "relative_camera"]
