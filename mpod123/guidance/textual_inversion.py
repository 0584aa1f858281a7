"""Textual inversion: one new word, `<e>`, that describes the reference object.

Everything in Stable Diffusion stays frozen; the only trainable tensor is the
embedding vector of `<e>`, injected into the text encoder's token embeddings
by a forward hook. So the rest of the vocabulary is untouched by construction,
and the optimiser keeps state for one vector instead of the whole table.

Prior work spends hours here (Magic123: 3000 steps at batch 16 on 512²
crops, with a VAE encode of every crop on every step). Two things make each of
our steps cheap: a fixed pool of random augmentations of the reference is
encoded once (``augmentations`` VAE passes in total), and each step is then a
text-encoder pass plus one UNet forward and backward. With
``fresh_augmentations`` every step draws and encodes new crops instead, as
Magic123 does (the ``paper`` preset): no crop is seen twice, for a VAE encode
per crop per step.

Ready-made embeddings load from the diffusers format (``learned_embeds.bin``
or ``.safetensors``: ``{token: vector}``) and from the older
``{"string_to_param": {"*": vector}}`` format.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import TextualInversionConfig
from ..runtime.errors import Mpod123Error
from ..runtime.syncs import takes_gpu_paths, to_device
from .multiview import resize_rgba
from .stable_diffusion import StableDiffusionModels


class EmbeddingError(Mpod123Error, ValueError):
    """An embedding file that cannot be used; the message says why."""


# ------------------------------------------------------------------ tokens
def add_token(models: StableDiffusionModels, token: str, vector: Tensor | None = None, init_token: str = "object") -> int:
    """Add ``token`` to the tokenizer and text encoder (once) and set its embedding row.

    Without ``vector`` the row starts as ``init_token``'s (first sub-token's)
    embedding. Returns the token id.
    """
    tokenizer, encoder = models.tokenizer, models.text_encoder
    if tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id):
        tokenizer.add_tokens([token])
        encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    token_id = tokenizer.convert_tokens_to_ids(token)
    table = encoder.get_input_embeddings().weight
    if vector is None:
        init_ids = tokenizer(init_token, add_special_tokens=False).input_ids
        if not init_ids:
            raise EmbeddingError(f"the initialiser word {init_token!r} has no tokens")
        vector = table[init_ids[0]]
    if vector.shape != table.shape[1:]:
        raise EmbeddingError(
            f"the embedding for {token!r} has {tuple(vector.shape)} values but this text encoder needs "
            f"{tuple(table.shape[1:])}; it was learned for another Stable Diffusion version"
        )
    with torch.no_grad():
        table[token_id] = vector.to(table)
    return token_id


def save_embedding(path: str | Path, token: str, vector: Tensor) -> Path:
    """Write ``{token: vector}`` as diffusers does (.safetensors, or torch's format for .bin)."""
    path = Path(path)
    tensors = {token: vector.detach().float().cpu().contiguous()}
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(tmp))
    else:
        torch.save(tensors, tmp)
    tmp.replace(path)
    return path


def load_embedding(path: str | Path) -> tuple[str | None, Tensor]:
    """(token or None, vector) from a diffusers or older-format embedding file."""
    path = Path(path)
    if not path.is_file():
        raise EmbeddingError(f"no embedding file at {path}; train one (leave --embedding out) or give the right path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign files
        raise EmbeddingError(f"cannot read the embedding file {path}: {exc}") from None
    if isinstance(data, dict) and "string_to_param" in data:
        params = data["string_to_param"]
        vector = next(iter(params.values())) if params else None
        token = data.get("name")
    elif isinstance(data, dict) and len(data) == 1:
        token, vector = next(iter(data.items()))
    else:
        raise EmbeddingError(f"{path} is not a textual-inversion embedding (expected {{token: vector}})")
    if not isinstance(vector, Tensor):
        raise EmbeddingError(f"{path} holds no embedding vector")
    if vector.ndim == 2 and vector.shape[0] == 1:
        vector = vector[0]
    if vector.ndim != 1:
        raise EmbeddingError(f"{path} holds a {tuple(vector.shape)} embedding; only single-vector tokens are supported")
    return token, vector.float()


# ------------------------------------------------------------ augmentation
def augment(reference_rgba: Tensor, count: int, size: int, generator: torch.Generator) -> Tensor:
    """``count`` random views (count, size, size, 3) of the RGBA reference on white:
    scale 0.75-1.05, shifts up to 10%, a horizontal flip half of the time, a slight brightness jitter."""
    rgba = reference_rgba.permute(2, 0, 1)[None].float()
    scale = torch.rand(count, generator=generator) * 0.30 + 0.75
    shift = (torch.rand(count, 2, generator=generator) - 0.5) * 0.2
    flip = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0] = flip / scale
    theta[:, 1, 1] = 1.0 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, [count, 4, size, size], align_corners=False)
    views = F.grid_sample(rgba.expand(count, -1, -1, -1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    alpha = views[:, 3:]
    gain = 1.0 + (torch.rand(count, 1, 1, 1, generator=generator) - 0.5) * 0.1
    rgb = (views[:, :3] * gain).clamp(0, 1) * alpha + (1.0 - alpha)
    return rgb.permute(0, 2, 3, 1)


# ------------------------------------------------------------------ trainer
@dataclass
class InversionResult:
    token: str
    vector: Tensor
    losses: list[float]
    seconds: float
    steps: int


class TextualInversion:
    """Learns ``token``'s embedding on augmentations of the reference image."""

    def __init__(self, cfg: TextualInversionConfig, models: StableDiffusionModels, token: str = "<e>") -> None:
        self.cfg = cfg
        self.models = models
        self.token = token
        self.token_id = add_token(models, token, init_token=cfg.init_token)
        table = models.text_encoder.get_input_embeddings().weight
        self.vector = nn.Parameter(table[self.token_id].detach().clone().float())
        self._hook = models.text_encoder.get_input_embeddings().register_forward_hook(self._inject)
        self.scheduler = models.scheduler
        self.alphas = models.scheduler.alphas_cumprod.to(models.device)
        self.num_train_timesteps = models.scheduler.config.num_train_timesteps
        self.latent_pool: Tensor | None = None
        self._vae: tuple[nn.Module, torch.dtype] | None = None
        self.prepared_reference: Tensor | None = None
        """What :meth:`prepare_reference` made, kept for fresh augmentations each step."""

    def _inject(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        """Replace the looked-up rows of ``token`` by the trainable vector (with its gradient)."""
        ids = inputs[0]
        hit = (ids == self.token_id)[..., None]
        return torch.where(hit, self.vector.to(output.dtype), output)

    def close(self) -> None:
        """Write the learned vector into the table and remove the hook."""
        with torch.no_grad():
            self.models.text_encoder.get_input_embeddings().weight[self.token_id] = self.vector.detach()
        self._hook.remove()

    # --------------------------------------------------------------- pieces
    @property
    def crop_size(self) -> int:
        return self.cfg.resolution or self.models.native_size

    def prepare_reference(self, reference_rgba: Tensor) -> Tensor:
        """The reference the augmentations are cut from, at most the crop size (kept)."""
        size = self.crop_size
        ref = reference_rgba.float()
        if max(ref.shape[:2]) > size:  # kept at the photo's resolution: area-downsample before the bilinear warps
            ref = resize_rgba(ref[None], size, size)[0]
        self.prepared_reference = ref
        return ref

    @torch.no_grad()
    def encode_views(self, views: Tensor, chunk: int = 8) -> Tensor:
        """Scaled latents (N, 4, h, w) of views (N, H, W, 3) in [0, 1], through :meth:`encoding_vae`."""
        if self._vae is None:
            self._vae = self.encoding_vae()
        vae, dtype = self._vae
        out = []
        for start in range(0, len(views), chunk):
            x = views[start : start + chunk].permute(0, 3, 1, 2).to(self.models.device, dtype)
            out.append(vae.encode(x * 2.0 - 1.0).latent_dist.mode() * vae.config.scaling_factor)
        return torch.cat(out).float()

    @torch.no_grad()
    def encode_pool(self, reference_rgba: Tensor, chunk: int = 8) -> Tensor:
        """Encode ``cfg.augmentations`` augmented views once: (N, 4, h, w) scaled latents."""
        gen = torch.Generator().manual_seed(self.cfg.seed)
        views = augment(self.prepare_reference(reference_rgba), self.cfg.augmentations, self.crop_size, gen)
        self.latent_pool = self.encode_views(views, chunk)
        return self.latent_pool

    def encoding_vae(self) -> tuple[nn.Module, torch.dtype]:
        """The VAE to encode the pool with, and its input dtype: a float32 copy (decoder left out)
        when the models run in float16 and the VAE's config sets ``force_upcast``, as diffusers'
        pipelines do (SD's VAE overflows in fp16); the shared fp16 VAE is left as it is."""
        vae = self.models.vae
        if self.models.dtype != torch.float16 or not getattr(vae.config, "force_upcast", False):
            return vae, self.models.dtype
        decoder = getattr(vae, "decoder", None)
        vae.decoder = None  # not copied: only the encoder runs here
        try:
            upcast = copy.deepcopy(vae).float().requires_grad_(False)
        finally:
            vae.decoder = decoder
        return upcast, torch.float32

    def prompts(self, generator: torch.Generator, count: int) -> list[str]:
        pick = torch.randint(len(self.cfg.templates), (count,), generator=generator)
        return [self.cfg.templates[i].format(self.token) for i in pick.tolist()]

    def template_ids(self) -> Tensor:
        """(templates, L) token ids of every caption template, tokenised once and kept on the device."""
        ids = self.__dict__.get("_template_ids")
        if ids is None:
            tok = self.models.tokenizer
            captions = [template.format(self.token) for template in self.cfg.templates]
            ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(self.models.device)
            self.__dict__["_template_ids"] = ids
        return ids

    def loss(self, latents: Tensor, t: Tensor, noise: Tensor, prompts: list[str] | Tensor) -> Tensor:
        """The diffusion training loss with the prompts' text embeddings (gradient reaches ``vector``).
        ``prompts``: captions, or template indices (B,) (:meth:`draw`'s, read on the device)."""
        if isinstance(prompts, Tensor):
            ids = self.template_ids()[prompts.to(self.models.device)]
        else:
            tok = self.models.tokenizer
            ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(self.models.device)
        hidden = self.models.text_encoder(ids)[0]
        noisy = self.scheduler.add_noise(latents, noise, t)
        pred = self.models.unet(noisy.to(self.models.dtype), t, encoder_hidden_states=hidden.to(self.models.dtype)).sample
        if self.scheduler.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, t)
        else:
            target = noise
        return F.mse_loss(pred.float(), target.float())

    def draw(self, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """A training batch: latents (pooled, or of fresh augmentations), timesteps, noise and the captions'
        template indices (indices, so no caption is read back to the host)."""
        b = self.cfg.batch_size
        if self.latent_pool is None and self.cfg.fresh_augmentations:  # a pool set by the caller wins
            if self.prepared_reference is None:
                raise RuntimeError("call prepare_reference (or train) before drawing fresh augmentations")
            latents = self.encode_views(augment(self.prepared_reference, b, self.crop_size, generator))
        else:
            idx = torch.randint(len(self.latent_pool), (b,), generator=generator)
            latents = self.latent_pool[to_device(idx, self.latent_pool.device)]
        device = self.models.device  # the draws travel non-blocking from pinned memory on CUDA
        t = to_device(torch.randint(self.num_train_timesteps, (b,), generator=generator), device)
        noise = to_device(torch.randn(latents.shape, generator=generator), device)
        pick = to_device(torch.randint(len(self.cfg.templates), (b,), generator=generator), device)
        return latents, t, noise, pick

    @property
    def loss_scale(self) -> float:
        """The constant the loss is multiplied by before backward (see TextualInversionConfig.loss_scale)."""
        if self.cfg.loss_scale is not None:
            return float(self.cfg.loss_scale)
        return 1024.0 if self.models.dtype in (torch.float16, torch.bfloat16) else 1.0

    def step(self, batch: tuple[Tensor, Tensor, Tensor, list[str]], optimizer: torch.optim.Optimizer) -> Tensor:
        """One optimisation step of ``vector`` on ``batch``; returns the loss before the step, a
        0-d tensor left on the device (reading it would wait for the GPU every step).

        The loss is scaled by :attr:`loss_scale` for the backward pass only, so an fp16 UNet's
        gradients stay in fp16's normal range; Adam's update does not depend on that constant."""
        loss = self.loss(*batch)
        optimizer.zero_grad(set_to_none=True)
        (loss * self.loss_scale).backward()
        optimizer.step()
        return loss.detach()

    def optimizer(self) -> torch.optim.Optimizer:
        """Adam; fused on a GPU, where it keeps its step count on the device (no read per step)."""
        return torch.optim.Adam([self.vector], lr=self.cfg.lr, fused=True if takes_gpu_paths(self.models.device) else None)

    # ----------------------------------------------------------------- loop
    def train(
        self,
        reference_rgba: Tensor,
        on_step: Callable[[int, int, Tensor], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        check_every: int = 50,
    ) -> InversionResult:
        """Run ``cfg.steps`` steps; ``on_step(step, total, loss)`` after each, ``should_stop()`` checked before each.

        ``loss`` is a 0-d device tensor: a callback that reads it (``float(loss)``) waits for the
        device, so it should do so only when it reports (the runner's is throttled). The losses
        are checked for divergence every ``check_every`` steps and at the end, one sync each."""
        start = time.perf_counter()
        if self.latent_pool is None and self.cfg.fresh_augmentations:
            self.prepare_reference(reference_rgba)
        elif self.latent_pool is None:
            self.encode_pool(reference_rgba)
        opt = self.optimizer()
        gen = torch.Generator().manual_seed(self.cfg.seed + 1)
        losses: list[Tensor] = []
        checked = 0
        for step in range(self.cfg.steps):
            if should_stop is not None and should_stop():
                break
            value = self.step(self.draw(gen), opt)
            losses.append(value)
            if len(losses) - checked >= check_every:
                self._check_finite(losses, checked)
                checked = len(losses)
            if on_step is not None:
                on_step(step + 1, self.cfg.steps, value)
        self._check_finite(losses, checked)
        self.close()
        values = torch.stack(losses).float().cpu().tolist() if losses else []
        return InversionResult(self.token, self.vector.detach().clone(), values, time.perf_counter() - start, len(values))

    @staticmethod
    def _check_finite(losses: list[Tensor], start: int) -> None:
        """FloatingPointError naming the first non-finite loss from ``start`` on (one host sync)."""
        if start >= len(losses):
            return
        recent = torch.stack(losses[start:])
        bad = ~torch.isfinite(recent)
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            raise FloatingPointError(
                f"textual inversion diverged at step {start + first} (loss {float(recent[first])}); lower its lr"
            )


__all__ = [
    "EmbeddingError",
    "InversionResult",
    "TextualInversion",
    "add_token",
    "augment",
    "load_embedding",
    "save_embedding",
]
