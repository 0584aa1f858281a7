"""CLIP image embeddings, the CLIP score and the multi-view consistency (MVC).

- **CLIP score**: the mean cosine similarity between the CLIP image embedding
  of each novel view and that of the reference image (the paper's CLIP↑).
- **MVC**: the paper gives no formula. OUR definition: the mean CLIP cosine
  similarity between views adjacent in azimuth on the turntable, the last view
  paired with the first (N pairs for N views). It depends on N, so the view
  count is always reported next to it.

Embeddings are the projected image embeddings (``visual_projection`` of the
pooled output). Images are preprocessed as OpenAI's CLIP was trained: resized
to the model's input size with bicubic filtering and clamped, then normalised
with OpenAI's mean and standard deviation. Our renders are square, so the
resize is the whole of the original's resize-and-centre-crop; it is
antialiased, as the original's PIL resize is (Hugging Face's processor differs,
transformers #22505). The backbone's name is reported with every score.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import WeightsUnavailable

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(images: Tensor, size: int) -> Tensor:
    """(B, H, W, 3) in [0, 1] -> (B, 3, size, size), OpenAI's normalisation."""
    x = images.permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    mean = x.new_tensor(CLIP_MEAN)[:, None, None]
    std = x.new_tensor(CLIP_STD)[:, None, None]
    return (x.clamp(0, 1) - mean) / std


def _hub_cache() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - transformers depends on it
        return "the Hugging Face cache"


class ClipEmbedder:
    """A CLIP image tower loaded from a hub id (local cache only when offline) or a local folder.

    Accepts a full ``CLIPModel`` checkpoint, a ``CLIPVisionModelWithProjection``
    (Zero123's ``image_encoder``), or a diffusers folder holding one in
    ``image_encoder/``. Raises :class:`WeightsUnavailable` with the model id,
    the cache folder and the flag to use when it cannot be loaded.
    """

    def __init__(self, source: str, device: torch.device | str = "cpu") -> None:
        self.source = source
        self.device = torch.device(device)
        self.model, self.image_size = self._load(source)
        self.model.to(self.device).eval().requires_grad_(False)

    @staticmethod
    def _load(source: str):
        from transformers import AutoConfig, CLIPModel, CLIPVisionModelWithProjection
        from transformers.utils import logging as hf_logging

        kwargs: dict = {}
        if os.path.isdir(source) and (Path(source) / "image_encoder" / "config.json").is_file():
            kwargs["subfolder"] = "image_encoder"
        hint = (
            f"CLIP backbone {source!r} could not be loaded (Hugging Face cache: {_hub_cache()}); "
            "download it into the cache with network access, or pass --clip DIR with a local copy "
            "(a CLIPModel or CLIPVisionModelWithProjection folder)"
        )
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the load report lists the unused text tower; not news
        try:
            config = AutoConfig.from_pretrained(source, **kwargs)
            model_type = getattr(config, "model_type", "")
            if model_type == "clip":
                model = CLIPModel.from_pretrained(source, **kwargs)
            elif model_type == "clip_vision_model":
                model = CLIPVisionModelWithProjection.from_pretrained(source, **kwargs)
            else:
                raise WeightsUnavailable(f"{hint}: its config is a {model_type!r} model, not CLIP")
        except WeightsUnavailable:
            raise
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsUnavailable(f"{hint}: {first}") from None
        finally:
            hf_logging.set_verbosity(verbosity)
        vision_cfg = getattr(config, "vision_config", config)
        return model, int(vision_cfg.image_size)

    @torch.no_grad()
    def embed(self, images: Tensor, batch: int = 16) -> Tensor:
        """Unit-length image embeddings (B, D) of images (B, H, W, 3) in [0, 1]."""
        out = []
        for chunk in images.split(batch):
            x = clip_preprocess(chunk.to(self.device), self.image_size).to(self.model.dtype)
            pooled = self.model.vision_model(pixel_values=x).pooler_output
            out.append(F.normalize(self.model.visual_projection(pooled).float(), dim=-1).cpu())
        return torch.cat(out)


def clip_score(view_embeddings: Tensor, reference_embedding: Tensor) -> tuple[float, list[float]]:
    """Mean cosine similarity of views (N, D) to the reference (D,), and the per-view values."""
    sims = F.normalize(view_embeddings, dim=-1) @ F.normalize(reference_embedding, dim=-1)
    return float(sims.mean()), [float(s) for s in sims]


def multiview_consistency(turntable_embeddings: Tensor) -> tuple[float, list[float]]:
    """OUR MVC: mean cosine similarity of views adjacent in azimuth, wrap-around included.

    ``turntable_embeddings`` (N, D) are in turntable order; pair k is (view k, view k+1 mod N).
    """
    e = F.normalize(turntable_embeddings, dim=-1)
    if e.shape[0] < 2:
        raise ValueError("MVC needs at least two views")
    sims = (e * e.roll(-1, dims=0)).sum(-1)
    return float(sims.mean()), [float(s) for s in sims]
