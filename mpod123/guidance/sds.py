"""What every score-distillation prior shares: loading, latents, the timestep draw and the SDS loss.

SDS (DreamFusion): for latents z of a render, noise ε and a timestep t,
grad = w(t) (ε̂(z_t; y, t) - ε) with w(t) = 1 - ᾱ_t. The loss
0.5 ||z - sg(z - grad)||² has exactly ``grad`` as its gradient with respect to
z, so autograd carries it back through the VAE encoder into the render and
from there into the 3D representation. ε̂ comes from one batched UNet call
over the conditional and unconditional branches (classifier-free guidance).

Every draw (timestep, noise) comes from a CPU generator seeded by the run's seed,
the prior and the step, so a run is reproducible on any device and resumes
exactly, while other seeds and the other stage draw other sequences. On CUDA the
draws travel from pinned memory without blocking the host.
"""

from __future__ import annotations

import copy
import hashlib
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from ..runtime.syncs import to_device
from ..runtime.weights import ModelNotFound, missing_offline  # the weights' catalog (a leaf module, no torch)


def hf_cache_dir() -> str:
    return os.environ.get("HF_HUB_CACHE") or os.path.join(os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub")


def load_component(cls, source: str, subfolder: str | None, dtype: torch.dtype | None, what: str, switch: str):
    """``cls.from_pretrained(source, subfolder=...)`` with an error that says how to fix a missing model.

    ``what`` names the model for the message ("Zero123"), ``switch`` the config
    field and command-line flag that point at a local copy.
    """
    kwargs = {"torch_dtype": dtype} if dtype is not None else {}
    if subfolder:
        kwargs["subfolder"] = subfolder
    why = missing_offline(source, subfolder)  # not here and no network: say so now, not after the hub's retries
    if why:
        raise ModelNotFound(f"cannot load the {what} model {source!r}: {why}. Run `mpod123 models download` where "
                            f"there is internet, or set {switch} to a local folder.")
    try:
        return cls.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        part = f"'{subfolder}' of " if subfolder else ""
        raise ModelNotFound(
            f"cannot load {part}the {what} model {source!r} ({exc}). Looked in the folder if it is one, "
            f"else in the Hugging Face cache ({hf_cache_dir()}). Download it where there is internet "
            f"(`mpod123 models download`, or `huggingface-cli download {source}`), or set {switch} to a local folder."
        ) from None


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is float16 on CUDA and float32 elsewhere."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


class ScoreDistillation:
    """Base of the SDS guidances. Subclasses set ``vae``, ``scheduler``, ``image_size`` and
    ``dtype``/``device``, call :meth:`_init_schedule`, and implement ``predict_noise``."""

    vae: torch.nn.Module
    dtype: torch.dtype
    device: torch.device
    image_size: int

    def _init_schedule(self, scheduler) -> None:
        self.scheduler = scheduler
        self.alphas = scheduler.alphas_cumprod.to(self.device)
        self.num_train_timesteps = scheduler.config.num_train_timesteps

    def encode(self, images: Tensor, mode: bool = True, scaled: bool = True) -> Tensor:
        """(B, H, W, 3) in [0, 1] -> latents at the model's size (scaled by the VAE factor if ``scaled``).

        Renders larger than the model's size are resized with antialiasing
        (stage 2 renders 1024² for a 512² VAE), smaller ones bilinearly. The resize
        and its backward run in float32 whatever the model's dtype (in half precision
        the backward would accumulate with half-precision atomics); the cast comes
        right before the VAE, which encodes in float32 when its config says
        ``force_upcast`` (as diffusers' own pipelines do: SD's VAE overflows in fp16).
        """
        x = images.float().permute(0, 3, 1, 2)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            antialias = x.shape[-1] > self.image_size
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=antialias)
        vae, dtype = self.encoder()
        posterior = vae.encode((x * 2.0 - 1.0).to(dtype)).latent_dist
        latents = posterior.mode() if mode else posterior.sample()
        return latents * vae.config.scaling_factor if scaled else latents

    def encoder(self) -> tuple[torch.nn.Module, torch.dtype]:
        """The VAE to encode with and its input dtype: a float32 copy of it (decoder left out)
        when the model runs in float16 and the VAE's config sets ``force_upcast``."""
        if self.dtype != torch.float16 or not getattr(self.vae.config, "force_upcast", False):
            return self.vae, self.dtype
        upcast = self.__dict__.get("_vae_fp32")
        if upcast is None:
            decoder = getattr(self.vae, "decoder", None)
            self.vae.decoder = None  # not copied: only the encoder runs here
            try:
                upcast = copy.deepcopy(self.vae).float().requires_grad_(False)
            finally:
                self.vae.decoder = decoder
            self.__dict__["_vae_fp32"] = upcast
        return upcast, torch.float32

    seed: int = 0
    """The run's seed (the prior's config sets it); with ``stream`` and the step it seeds each draw."""
    stream: str = "sds"
    """Names the prior (and so the stage), so the two stages never replay each other's draws."""

    def draw_seed(self, step: int) -> int:
        """A 63-bit seed from (run seed, stream, step): a new sequence for every run and stage."""
        key = f"{int(self.seed)}:{self.stream}:{int(step)}".encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & ((1 << 63) - 1)

    def draw(self, step: int, shape: torch.Size, lo: float, hi: float) -> tuple[Tensor, Tensor]:
        """Integer timesteps (B,) in [lo, hi] x T and unit noise of ``shape``, from a generator seeded
        by the run's seed, the prior and the step (so a resumed run replays the same draws)."""
        gen = torch.Generator().manual_seed(self.draw_seed(step))
        t = (torch.rand(shape[0], generator=gen) * (hi - lo) + lo).mul(self.num_train_timesteps).long()
        t = to_device(t.clamp(0, self.num_train_timesteps - 1), self.device)  # non-blocking on CUDA
        noise = to_device(torch.randn(shape, generator=gen), self.device)
        return t, noise

    def predict_noise(self, noisy: Tensor, t: Tensor, *conditioning) -> Tensor:
        raise NotImplementedError

    def sds_grad(self, latents: Tensor, t: Tensor, noise: Tensor, *conditioning) -> Tensor:
        """w(t) (ε̂ - ε) for latents (B, 4, h, w) at integer timesteps ``t`` (B,)."""
        noisy = self.scheduler.add_noise(latents.detach(), noise, t)
        eps = self.predict_noise(noisy.to(self.dtype), t, *conditioning)
        w = (1.0 - self.alphas[t]).view(-1, 1, 1, 1)
        return (w * (eps.float() - noise.float())).to(latents.dtype)

    @staticmethod
    def sds_loss(latents: Tensor, grad: Tensor) -> Tensor:
        """0.5 ||z - sg(z - grad)||² summed per view, averaged over views: d loss / dz = grad / B."""
        target = (latents - torch.nan_to_num(grad)).detach()
        return 0.5 * F.mse_loss(latents, target, reduction="sum") / latents.shape[0]
