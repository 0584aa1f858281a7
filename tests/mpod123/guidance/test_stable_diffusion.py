"""Stable Diffusion guidance with DAI and textual inversion, on tiny random models saved like the real ones."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from mpod123.camera import orbit_cameras  # noqa: E402
from mpod123.config import StableDiffusionConfig, TextualInversionConfig  # noqa: E402
from mpod123.guidance import GuidanceInput  # noqa: E402
from mpod123.guidance.sds import ModelNotFound  # noqa: E402
from mpod123.guidance.stable_diffusion import StableDiffusionGuidance, load_stable_diffusion  # noqa: E402
from mpod123.guidance.textual_inversion import (  # noqa: E402
    EmbeddingError,
    TextualInversion,
    add_token,
    augment,
    load_embedding,
    save_embedding,
)

from ...tiny_models import save_tiny_stable_diffusion  # noqa: E402


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("sd"))


def _cfg(path, **kw) -> StableDiffusionConfig:
    return StableDiffusionConfig(model=str(path), **kw)


@pytest.fixture
def guidance(tiny_sd):
    models = load_stable_diffusion(str(tiny_sd))
    add_token(models, "<e>", torch.randn(32))
    g = StableDiffusionGuidance(_cfg(tiny_sd), models)
    yield g
    g.close()


def _input(step: int = 3, masks=None, b: int = 2) -> GuidanceInput:
    gen = torch.Generator().manual_seed(step)
    rgb = torch.rand(b, 32, 32, 3, generator=gen, requires_grad=True)
    cams = orbit_cameras(80.0, [20.0 * i for i in range(b)], 2.5, 40.0, 32)
    return GuidanceInput(rgb, torch.ones(b, 32, 32, 1), cams, torch.ones(b, 3), step, 100, None, masks)


def _left_masks(b: int = 2) -> torch.Tensor:
    masks = torch.ones(b, 32, 32, 1)
    masks[:, :, :12] = 0.0  # the left part lies outside the stage-1 outline
    return masks


def test_loads_the_real_layout_offline_without_a_decoder(tiny_sd, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models = load_stable_diffusion(str(tiny_sd))
    assert models.vae.decoder is None, "SDS never decodes"
    assert type(models.scheduler).__name__ == "DDIMScheduler", "the PNDM config is read as DDIM"
    assert not any(p.requires_grad for m in (models.unet, models.vae, models.text_encoder) for p in m.parameters())


def test_missing_weights_name_the_model_and_the_switch(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="no-such/sd.*--sd"):
        load_stable_diffusion("no-such/sd")
    with pytest.raises(ModelNotFound, match="huggingface"):
        load_stable_diffusion(str(tmp_path))


def test_prompt_token_is_found_by_the_tokenizer_and_mrca_sits_on_cross_attention_only(guidance):
    ids = guidance.models.tokenizer(guidance.cfg.prompt, padding="max_length", max_length=77).input_ids
    e_id = guidance.models.tokenizer.convert_tokens_to_ids("<e>")
    assert [i for i, t in enumerate(ids) if t == e_id] == guidance.token_indices
    assert guidance.mrca_layers and all(n.endswith("attn2.processor") for n in guidance.mrca_layers)
    procs = guidance.unet.attn_processors
    assert all(type(p).__name__ != "MRCAAttnProcessor" for n, p in procs.items() if n.endswith("attn1.processor"))


def test_cfg_is_one_batched_call_with_the_prompt_and_negative_prompt(guidance):
    noisy = torch.randn(2, 4, 8, 8)
    t = torch.tensor([400, 100])
    got = guidance.predict_noise(noisy, t)
    with torch.no_grad():
        cond = guidance.unet(noisy, t, encoder_hidden_states=guidance.embed(guidance.cfg.prompt).expand(2, -1, -1)).sample
        uncond = guidance.unet(noisy, t, encoder_hidden_states=guidance.embed("").expand(2, -1, -1)).sample
    torch.testing.assert_close(got, uncond + 100.0 * (cond - uncond), atol=2e-3, rtol=1e-4)


def test_sds_gradient_is_w_times_noise_residual_through_the_encoder(guidance):
    inp = _input(step=11, masks=_left_masks())
    loss = guidance(inp)["sds_dai"]
    (auto,) = torch.autograd.grad(loss, inp.rgb)
    # by hand: the same draws, the mask on the latent grid, and the chain rule through the encoder
    t, noise = guidance.draw(11, torch.Size([2, 4, 8, 8]), 0.02, 0.5)
    assert ((t >= 20) & (t <= 500)).all()
    x = inp.rgb.detach().requires_grad_(True)
    latents = guidance.encode(x)
    guidance.mask_state.mask = guidance.latent_masks(inp.masks)
    eps = guidance.predict_noise(guidance.scheduler.add_noise(latents.detach(), noise, t), t)
    guidance.mask_state.mask = None
    w = (1.0 - guidance.alphas[t]).view(-1, 1, 1, 1)
    grad = guidance.cfg.weight * w * (eps - noise) / 2  # / B: the loss averages views
    (manual,) = torch.autograd.grad(latents, x, grad_outputs=grad)
    torch.testing.assert_close(auto, manual, atol=1e-6, rtol=1e-4)
    assert auto.abs().sum() > 0


def test_stage1_masks_reach_every_cross_attention_layer_and_zero_e_outside(guidance):
    masks = _left_masks()
    guidance.mask_state.record = True
    try:
        guidance(_input(masks=masks))
    finally:
        guidance.mask_state.record = False
    recorded = guidance.mask_state.recorded
    guidance.mask_state.recorded = []
    assert {name for name, *_ in recorded} == set(guidance.mrca_layers)
    (e,) = guidance.token_indices
    for name, heads, probs, plain in recorded:
        side = int(math.isqrt(probs.shape[1]))
        # the masked-out cells at this layer's resolution: area-averaged to the latent grid, >= 0.5,
        # then area-averaged to the layer, >= 0.5 (a cell is inside when most of it is)
        latent = torch.nn.functional.interpolate(masks[:1].permute(0, 3, 1, 2), size=guidance.latent_size, mode="area")
        layer = torch.nn.functional.interpolate(latent.ge(0.5).float(), size=side, mode="area")
        outside = layer[0, 0].lt(0.5).flatten()
        assert 0 < outside.sum() < outside.numel()
        cond = probs[: 2 * heads]
        assert torch.all(cond[:, outside, e] == 0.0), name
        assert torch.all(cond[:, ~outside, e] > 0.0), name
        assert torch.equal(probs[2 * heads :], plain[2 * heads :]), "the unconditional half is untouched"
    assert guidance.mask_state.mask is None, "the mask does not outlive the call"


def test_without_masks_or_with_mrca_off_the_call_is_the_plain_sds(tiny_sd):
    models = load_stable_diffusion(str(tiny_sd))
    add_token(models, "<e>", torch.randn(32))
    on, off = StableDiffusionGuidance(_cfg(tiny_sd), models), None
    try:
        full = on(_input(masks=torch.ones(2, 32, 32, 1)))["sds_dai"]
        masked = on(_input(masks=_left_masks()))["sds_dai"]
        on.close()
        off = StableDiffusionGuidance(_cfg(tiny_sd, mrca=False), models)
        plain = off(_input(masks=_left_masks()))["sds_dai"]
    finally:
        on.close()
    assert torch.equal(full, plain), "an all-ones mask, or MRCA off, gives the same loss bit for bit"
    assert not torch.equal(masked, plain), "a real mask changes the guidance"


# ---------------------------------------------------------------- textual inversion
def _reference() -> torch.Tensor:
    rgba = torch.zeros(24, 24, 4)
    rgba[6:18, 4:20] = torch.tensor([0.9, 0.3, 0.1, 1.0])
    return rgba


def test_augmentations_keep_the_object_on_white():
    views = augment(_reference(), 6, 32, torch.Generator().manual_seed(0))
    assert views.shape == (6, 32, 32, 3)
    corners = views[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    torch.testing.assert_close(corners, torch.ones_like(corners))
    reddish = (views[..., 0] - views[..., 2]) > 0.5
    assert (reddish.flatten(1).sum(1) > 20).all(), "every view shows the object"
    assert not torch.equal(views[0], views[1]), "views differ"


def test_inversion_steps_lower_the_loss_of_a_batch(tiny_sd):
    models = load_stable_diffusion(str(tiny_sd))
    ti = TextualInversion(TextualInversionConfig(batch_size=4, lr=5e-2, augmentations=8), models)
    ti.encode_pool(_reference())
    batch = ti.draw(torch.Generator().manual_seed(123))
    opt = ti.optimizer()
    losses = [ti.step(batch, opt) for _ in range(6)]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert ti.vector.grad is not None and ti.vector.grad.abs().sum() > 0


def test_inversion_changes_only_the_new_row(tiny_sd):
    models = load_stable_diffusion(str(tiny_sd))
    ti = TextualInversion(TextualInversionConfig(steps=5, batch_size=2, augmentations=4), models)
    table_before = models.text_encoder.get_input_embeddings().weight.detach().clone()
    result = ti.train(_reference())
    assert result.steps == 5 and len(result.losses) == 5 and result.seconds > 0
    table_after = models.text_encoder.get_input_embeddings().weight.detach()
    others = torch.ones(len(table_after), dtype=torch.bool)
    others[ti.token_id] = False
    assert torch.equal(table_after[others], table_before[others]), "every other row is untouched"
    assert not torch.equal(table_after[ti.token_id], table_before[ti.token_id])
    torch.testing.assert_close(table_after[ti.token_id], result.vector)


def test_inversion_stops_when_asked(tiny_sd):
    models = load_stable_diffusion(str(tiny_sd))
    ti = TextualInversion(TextualInversionConfig(steps=50, batch_size=1, augmentations=2), models)
    seen = []
    result = ti.train(_reference(), on_step=lambda s, n, loss: seen.append(s), should_stop=lambda: len(seen) >= 3)
    assert result.steps == 3 and seen == [1, 2, 3]


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_embeddings_round_trip_in_the_diffusers_formats(tmp_path, tiny_sd, suffix):
    vec = torch.randn(32)
    path = save_embedding(tmp_path / f"learned_embeds{suffix}", "<e>", vec)
    token, loaded = load_embedding(path)
    assert token == "<e>" and torch.equal(loaded, vec)
    models = load_stable_diffusion(str(tiny_sd))
    token_id = add_token(models, "<e>", loaded)
    assert torch.equal(models.text_encoder.get_input_embeddings().weight[token_id], vec)


def test_older_embedding_format_and_bad_files(tmp_path, tiny_sd):
    vec = torch.randn(1, 32)
    torch.save({"string_to_param": {"*": vec}, "name": "thing"}, tmp_path / "old.pt")
    token, loaded = load_embedding(tmp_path / "old.pt")
    assert token == "thing" and torch.equal(loaded, vec[0])
    (tmp_path / "junk.bin").write_bytes(b"not a tensor file")
    with pytest.raises(EmbeddingError, match="cannot read"):
        load_embedding(tmp_path / "junk.bin")
    with pytest.raises(EmbeddingError, match="no embedding file"):
        load_embedding(tmp_path / "missing.bin")
    models = load_stable_diffusion(str(tiny_sd))
    with pytest.raises(EmbeddingError, match="another Stable Diffusion version"):
        add_token(models, "<e>", torch.randn(768))


def test_one_detail_step_with_dai_reaches_the_dmtet(tiny_sd):
    from mpod123.config import detail_preset, outline_preset
    from mpod123.guidance import MultiViewSupervision
    from mpod123.stages import DetailStage, OutlineStage, ReferenceView
    from mpod123.bench.synthetic import turntable_dataset

    views = turntable_dataset(8, 24)
    ocfg = outline_preset("draft")
    ocfg.steps, ocfg.render.resolution, ocfg.preview_every, ocfg.checkpoint_every = 60, 24, 0, 0
    ref = ReferenceView(views.images[0], views.cameras[0])
    outline = OutlineStage(ocfg, ref, MultiViewSupervision(views.images, views.cameras))
    outline.run()
    models = load_stable_diffusion(str(tiny_sd))
    add_token(models, "<e>", torch.randn(32))
    dai = StableDiffusionGuidance(_cfg(tiny_sd), models)
    dai.mask_state.record = True
    dcfg = detail_preset("draft")
    dcfg.resolution, dcfg.nvm_mask_resolution, dcfg.preview_every, dcfg.checkpoint_every = 32, 32, 0, 0
    dcfg.reference_view_prob, dcfg.dmtet.resolution = 0.0, 16
    stage = DetailStage(dcfg, ref, dai, outline.field, outline.masks)
    sdf0, deform0 = stage.dmtet.sdf.detach().clone(), stage.dmtet.deform.detach().clone()
    losses = stage.train_step()
    dai.close()
    assert {"sds_dai", "nvm"} <= set(losses) and math.isfinite(losses["sds_dai"])
    assert not torch.equal(stage.dmtet.sdf, sdf0) and not torch.equal(stage.dmtet.deform, deform0)
    assert dai.mask_state.recorded, "the stage handed its stage-1 masks to MRCA"
