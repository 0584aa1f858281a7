"""Textual inversion: losses stay on the device between checks, and the pool encodes with the
VAE's force_upcast in fp16 (as diffusers' pipelines do)."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("diffusers")

from mpod123.config import TextualInversionConfig  # noqa: E402
from mpod123.guidance.stable_diffusion import load_stable_diffusion  # noqa: E402
from mpod123.guidance.textual_inversion import TextualInversion  # noqa: E402

from ...tiny_models import save_tiny_stable_diffusion  # noqa: E402


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("sd-ti"))


def _reference() -> torch.Tensor:
    rgba = torch.zeros(24, 24, 4)
    rgba[6:18, 4:20] = torch.tensor([0.9, 0.3, 0.1, 1.0])
    return rgba


def test_losses_stay_on_the_device_and_come_back_as_floats_at_the_end(tiny_sd):
    models = load_stable_diffusion(str(tiny_sd))
    ti = TextualInversion(TextualInversionConfig(steps=4, batch_size=1, augmentations=2, resolution=32), models)
    seen = []
    result = ti.train(_reference(), lambda step, total, loss: seen.append(loss))
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 and not v.requires_grad for v in seen), "no float() per step"
    assert result.losses == [float(v) for v in seen] and all(isinstance(v, float) for v in result.losses)


class _Diverging(TextualInversion):
    """The loss turns NaN from step ``at`` on."""

    at = 3

    def loss(self, *batch):
        self.calls = getattr(self, "calls", 0) + 1
        loss = super().loss(*batch)
        return loss * math.nan if self.calls > self.at else loss


@pytest.mark.parametrize("check_every", [2, 50])
def test_a_diverging_run_still_fails_and_names_its_first_bad_step(tiny_sd, check_every):
    models = load_stable_diffusion(str(tiny_sd))
    ti = _Diverging(TextualInversionConfig(steps=6, batch_size=1, augmentations=2, resolution=32), models)
    with pytest.raises(FloatingPointError, match="diverged at step 3 "):
        ti.train(_reference(), check_every=check_every)


def test_fp16_pool_encodes_with_a_float32_vae_when_the_config_says_force_upcast(tiny_sd):
    dtypes = []
    for force in (True, False):
        models = load_stable_diffusion(str(tiny_sd), "cpu", "float16")
        models.vae.register_to_config(force_upcast=force)
        seen = []
        # the hook travels with the module, so it reports from the float32 copy too
        models.vae.encoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype))
        ti = TextualInversion(TextualInversionConfig(batch_size=1, augmentations=2, resolution=32), models)
        pool = ti.encode_pool(_reference())
        assert torch.isfinite(pool).all() and pool.dtype == torch.float32
        assert models.vae.encoder.conv_in.weight.dtype == torch.float16, "the shared VAE stays in fp16"
        assert models.vae.encoder is not None and models.vae.quant_conv.weight.dtype == torch.float16
        dtypes.append(set(seen))
    assert dtypes == [{torch.float32}, {torch.float16}]
