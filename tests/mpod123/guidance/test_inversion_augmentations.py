"""Textual inversion on fresh augmentations every step (Magic123's way) against the fixed pool."""

from __future__ import annotations

import pytest
import torch

from mpod123.config import TextualInversionConfig


@pytest.fixture(scope="module")
def tiny_sd_dir(tmp_path_factory):
    pytest.importorskip("diffusers")
    from ...tiny_models import save_tiny_stable_diffusion

    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("sd_aug"))


def _reference() -> torch.Tensor:
    ref = torch.zeros(48, 48, 4)
    ref[12:36, 8:30] = torch.tensor([0.9, 0.3, 0.1, 1.0])
    ref[20:28, 30:40] = torch.tensor([0.1, 0.4, 0.9, 1.0])
    return ref


def test_fresh_augmentations_encode_new_crops_every_step_and_build_no_pool(tiny_sd_dir):
    from mpod123.guidance.stable_diffusion import load_stable_diffusion
    from mpod123.guidance.textual_inversion import TextualInversion, augment

    models = load_stable_diffusion(str(tiny_sd_dir), dtype="float32")
    cfg = TextualInversionConfig(steps=3, batch_size=2, resolution=32, fresh_augmentations=True, augmentations=4)
    ti = TextualInversion(cfg, models)
    ti.prepare_reference(_reference())
    gen = torch.Generator().manual_seed(5)
    a, _, _, _ = ti.draw(gen)
    b, _, _, _ = ti.draw(gen)
    assert a.shape == b.shape == (2, 4, 16, 16) and (a - b).abs().max() > 1e-3, "each draw is a new pair of crops"
    # what a draw encodes is the augmentation the generator dictates, through the same VAE path
    gen = torch.Generator().manual_seed(5)
    crops = augment(ti.prepared_reference, 2, 32, gen)
    assert torch.allclose(ti.encode_views(crops), a, atol=1e-5)
    result = ti.train(_reference())
    assert ti.latent_pool is None, "no fixed pool"
    assert result.steps == 3 and all(torch.isfinite(torch.tensor(result.losses)))


def test_a_pool_set_by_the_caller_wins_over_fresh_crops(tiny_sd_dir):
    """Extra views put every view's augmentations in the pool; fresh crops of the main photo
    alone would drop them."""
    from mpod123.guidance.stable_diffusion import load_stable_diffusion
    from mpod123.guidance.textual_inversion import TextualInversion

    models = load_stable_diffusion(str(tiny_sd_dir), dtype="float32")
    ti = TextualInversion(TextualInversionConfig(steps=1, batch_size=3, resolution=32, fresh_augmentations=True),
                          models)
    pool = torch.randn(1, 4, 16, 16)
    ti.latent_pool = pool
    latents, _, _, _ = ti.draw(torch.Generator().manual_seed(0))
    assert torch.equal(latents, pool.expand(3, -1, -1, -1))
