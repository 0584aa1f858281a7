"""VGG19's convolutional trunk in plain torch, with torchvision's parameter names.

torchvision does not import beside this project's torch, so the network is
written here: ``features`` is an ``nn.Sequential`` laid out exactly as
torchvision's ``vgg19().features`` (configuration E: 16 3x3 convolutions in
five blocks, ReLU after each, 2x2 max-pooling between blocks), so its state
dict keys are ``features.0.weight`` ... ``features.34.bias`` and torchvision's
ImageNet checkpoint loads into it (its ``classifier.*`` keys are ignored).
Only the layers up to relu5_4 (``features.35``) are built: that is the layer
the contextual metric reads.

The widths are a parameter so that tests can build a narrow network with the
same layer names and indices.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import VGG19_FILE, WeightsUnavailable

VGG19_WIDTHS = (64, 128, 256, 512, 512)
"""Channels of the five blocks of torchvision's vgg19."""
CONVS_PER_BLOCK = (2, 2, 4, 4, 4)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RELU5_4 = 35
"""Index of relu5_4 in ``features``."""


class VGG19Features(nn.Module):
    """VGG19's ``features`` up to relu5_4; ``widths`` (5 block widths) default to the real network's."""

    def __init__(self, widths: tuple[int, ...] = VGG19_WIDTHS) -> None:
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"VGG19 has 5 blocks; got widths {widths}")
        self.widths = tuple(widths)
        layers: list[nn.Module] = []
        in_ch = 3
        for block, (width, n) in enumerate(zip(widths, CONVS_PER_BLOCK)):
            for _ in range(n):
                layers += [nn.Conv2d(in_ch, width, 3, padding=1), nn.ReLU(inplace=True)]
                in_ch = width
            if block < 4:
                layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        assert len(self.features) == RELU5_4 + 1
        for m in self.features:  # torchvision's VGG initialisation: a random network keeps its signal
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, images: Tensor) -> Tensor:
        """relu5_4 features (B, C, H/16, W/16) of images (B, H, W, 3) in [0, 1] (ImageNet-normalised here)."""
        x = images.permute(0, 3, 1, 2)
        mean = x.new_tensor(IMAGENET_MEAN)[:, None, None]
        std = x.new_tensor(IMAGENET_STD)[:, None, None]
        return self.features((x - mean) / std)


def default_vgg_path() -> Path:
    """Where torchvision keeps its downloaded VGG19 (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise TypeError("the file does not hold a state dict")
    return state


def load_vgg19(path: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> VGG19Features:
    """The ImageNet VGG19 trunk from ``path`` (.pth or .safetensors, torchvision's key names).

    The widths are read from the file, so a narrow network saved with the same
    names loads too. Raises :class:`WeightsUnavailable` when the file is missing
    or is not a VGG19 state dict.
    """
    explicit = path is not None
    file = Path(path) if explicit else default_vgg_path()
    hint = (
        "pass --vgg FILE with torchvision's ImageNet vgg19 weights "
        f"({VGG19_FILE}, or a .safetensors with the same `features.N.weight` names)"
    )
    if not file.is_file():
        where = f"{file} does not exist" if explicit else f"no {VGG19_FILE} in torch's hub checkpoint folder {file.parent}"
        raise WeightsUnavailable(f"VGG19 weights not found: {where}; {hint}")
    try:
        state = _read_state_dict(file)
        features = {k: v for k, v in state.items() if k.startswith("features.")}
        widths = tuple(int(features[f"features.{i}.weight"].shape[0]) for i in (2, 7, 16, 25, 34))
        model = VGG19Features(widths)
        model.load_state_dict(features, strict=True)
    except Exception as exc:  # noqa: BLE001 - unpickling, safetensors and shape errors alike
        raise WeightsUnavailable(f"{file} is not a VGG19 state dict ({type(exc).__name__}: {exc}); {hint}") from None
    return model.to(device).eval().requires_grad_(False)
