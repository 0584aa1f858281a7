"""Mask Rectified Cross-Attention (MRCA), the paper's way to keep `<e>` inside the outline.

An attention processor installed on the UNet's cross-attention layers only
(``attn2``). For the token positions of `<e>` it sets the attention logits to
the dtype's most negative finite value (not -inf, which gives NaN in fp16)
wherever the stage-1 mask, resized to that layer's resolution, is 0; after the
softmax `<e>`'s probability there is exactly 0 and the other tokens share the
rest. It acts on the conditional rows of the CFG batch only. Its logits and
softmax follow the layer's ``upcast_attention``/``upcast_softmax`` like
diffusers' own attention, so an SD 2.x UNet in fp16 does not overflow. On a GPU
it decides once per mask (no read-back), keeps each layer's mask on the device
and runs one fused ``scaled_dot_product_attention`` under it, as diffusers'
stock processor does.

Its state lives in a :class:`MaskState` shared by every installed processor,
rather than in ``cross_attention_kwargs``, whose handling changes between
diffusers versions. With no mask, or a mask of all ones, the processor hands the call
to the layer's original processor, so the UNet's output is bitwise what it
would be without MRCA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor
from torch import Tensor

from ..runtime.syncs import takes_gpu_paths


@dataclass
class MaskState:
    mask: Tensor | None = None
    """(B_cond, 1, H, W) in {0, 1} at the latent resolution or finer; None disables MRCA."""
    token_indices: list[int] = field(default_factory=list)
    """Positions of `<e>` in the prompt, found with the tokenizer (:func:`find_token_indices`)."""
    conditional: Literal["first_half", "second_half", "all"] = "first_half"
    """Which rows of the UNet batch are conditional: CFG batches are [cond, uncond] by default."""
    record: bool = False
    """Keep every layer's attention probabilities (with and without MRCA) for inspection."""
    recorded: list[tuple[str, int, Tensor, Tensor]] = field(default_factory=list)
    """(layer name, heads, probabilities, probabilities without MRCA)."""
    _decided_for: object = field(default=None, init=False, repr=False, compare=False)
    _active: bool = field(default=False, init=False, repr=False, compare=False)
    _blocks: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def active(self) -> bool:
        """Whether MRCA masks anything, decided once per mask (once per UNet call, not per layer).
        On the CPU a mask of all ones hands every layer to the stock processor; on a GPU that
        would be a host sync, so any mask is applied (masking nothing, it changes nothing)."""
        if self.mask is not self._decided_for:
            self._decided_for, self._blocks = self.mask, {}
            if self.mask is None or not self.token_indices:
                self._active = False
            elif takes_gpu_paths(self.mask.device):
                self._active = True
            else:
                self._active = bool((self.mask < 0.5).any())
        return self._active

    def blocked(self, batch: int, seq_len: int, n_tokens: int, heads: int, device: torch.device) -> Tensor:
        """(batch * heads, seq_len, n_tokens) bool: the logits MRCA sets to the minimum, built once
        per layer resolution per mask and kept on the device."""
        self.active  # noqa: B018  (resets the cache when the mask changed)
        key = (batch, seq_len, n_tokens, heads, str(device))
        cached = self._blocks.get(key)
        if cached is None:
            rows = torch.arange(batch, device=device)
            rows = {"first_half": rows[: batch // 2], "second_half": rows[batch // 2 :], "all": rows}[self.conditional]
            blocked = ~layer_mask(self.mask.to(device), seq_len)  # (B_cond, seq)
            if blocked.shape[0] == 1 and rows.numel() > 1:
                blocked = blocked.expand(rows.numel(), -1)
            if blocked.shape[0] != rows.numel():
                raise ValueError(f"MRCA has masks for {blocked.shape[0]} views but {rows.numel()} conditional rows")
            full = torch.zeros(batch, seq_len, dtype=torch.bool, device=device)
            full[rows] = blocked
            full = full.repeat_interleave(heads, dim=0)  # head_to_batch_dim is batch-major
            tokens = torch.zeros(n_tokens, dtype=torch.bool)
            tokens[self.token_indices] = True
            cached = self._blocks[key] = full[:, :, None] & tokens.to(device)[None, None, :]
        return cached


def find_token_indices(tokenizer, prompt: str, token: str = "<e>") -> list[int]:
    """Positions of ``token`` in the tokenised prompt (never a hard-coded index)."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no token {token!r}; add it (textual inversion) before using MRCA")
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    found = [i for i, t in enumerate(ids) if t == token_id]
    if not found:
        raise ValueError(f"{token!r} does not occur in the prompt {prompt!r}")
    return found


def layer_mask(mask: Tensor, seq_len: int) -> Tensor:
    """The mask (B, 1, H, W) resized to a layer whose query has ``seq_len`` positions: (B, seq_len) bool.

    Area-averaged, then >= 0.5, as for the latent masks: a cell is inside when most of it is.
    (Nearest sampling would read each block's top-left pixel: a half-cell shift and an erosion
    on the 32/16/8 layers that set the layout.)"""
    h, w = mask.shape[-2:]
    factor = math.sqrt(h * w / seq_len)
    lh, lw = max(1, round(h / factor)), max(1, round(w / factor))
    if lh * lw != seq_len:
        raise ValueError(f"cannot map a {h}x{w} mask onto {seq_len} attention positions")
    return F.interpolate(mask.float(), size=(lh, lw), mode="area").reshape(mask.shape[0], -1) >= 0.5


class MRCAAttnProcessor:
    def __init__(self, state: MaskState, name: str = "", stock=None) -> None:
        """``stock`` is the layer's original processor, used whenever MRCA has nothing to do."""
        self.state = state
        self.name = name
        self._stock = stock if stock is not None else AttnProcessor()

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args, **kwargs) -> Tensor:
        state = self.state
        if encoder_hidden_states is None or not (state.active or state.record):
            return self._stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        batch = channel = height = width = None
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = encoder_hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))

        if state.active and not state.record and takes_gpu_paths(query.device):
            # the GPU's branch: one fused SDPA call (as diffusers' stock AttnProcessor2_0), the
            # blocked logits as a boolean mask kept on the device (True = attend)
            allowed = ~state.blocked(batch_size, query.shape[1], key.shape[1], attn.heads, query.device)
            if attention_mask is not None:
                blocked_bias = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device)
                allowed = attention_mask.to(query.dtype) + blocked_bias.masked_fill(~allowed, torch.finfo(query.dtype).min)
            hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, scale=attn.scale)
            return self._finish(attn, hidden_states, input_ndim, residual, batch, channel, height, width)
        # precision as diffusers' Attention.get_attention_scores: q and k in float32 when the
        # layer says upcast_attention (SD 2.x, whose fp16 logits overflow), the softmax in
        # float32 when it says upcast_softmax; the probabilities return to the input dtype
        dtype = query.dtype
        if attn.upcast_attention:
            query, key = query.float(), key.float()
        scores = torch.baddbmm(
            torch.empty(query.shape[0], query.shape[1], key.shape[1], dtype=query.dtype, device=query.device),
            query, key.transpose(-1, -2), beta=0, alpha=attn.scale,
        )
        if attention_mask is not None:
            scores = scores + attention_mask
        if attn.upcast_softmax:
            scores = scores.float()
        plain = scores
        if state.active:
            blocked = state.blocked(batch_size, query.shape[1], key.shape[1], attn.heads, scores.device)
            scores = scores.masked_fill(blocked, torch.finfo(scores.dtype).min)
        probs = scores.softmax(dim=-1).to(dtype)
        if state.record:
            state.recorded.append((self.name, attn.heads, probs.detach(), plain.softmax(dim=-1).detach()))
        return self._finish(attn, torch.bmm(probs, value), input_ndim, residual, batch, channel, height, width)

    @staticmethod
    def _finish(attn, out: Tensor, input_ndim: int, residual: Tensor, batch, channel, height, width) -> Tensor:
        """Heads back to channels, the output projection, the residual: as diffusers' processors."""
        hidden_states = attn.batch_to_head_dim(out)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install_mrca(unet, state: MaskState) -> list[str]:
    """Put MRCA on every cross-attention layer (``attn2``) of ``unet``; returns their names."""
    processors = dict(unet.attn_processors)
    names = [n for n in processors if n.endswith("attn2.processor")]
    for name in names:
        processors[name] = MRCAAttnProcessor(state, name, stock=processors[name])
    unet.set_attn_processor(processors)
    return names


def uninstall_mrca(unet) -> None:
    """Give every cross-attention layer its original processor back."""
    processors = {
        name: proc._stock if isinstance(proc, MRCAAttnProcessor) else proc for name, proc in unet.attn_processors.items()
    }
    unet.set_attn_processor(processors)
