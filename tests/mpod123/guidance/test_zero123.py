"""Zero-1-to-3 guidance with tiny random models saved and loaded like the real checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from mpod123.camera import orbit_cameras  # noqa: E402
from mpod123.guidance import GuidanceInput  # noqa: E402
from mpod123.guidance.zero123 import (  # noqa: E402
    CameraProjection,
    ModelNotFound,
    Zero123Config,
    Zero123Guidance,
    clip_preprocess,
    relative_camera,
)

from ...tiny_models import save_tiny_zero123  # noqa: E402


@pytest.fixture(scope="module")
def tiny_zero123(tmp_path_factory):
    return save_tiny_zero123(tmp_path_factory.mktemp("zero123"))


@pytest.fixture(scope="module")
def guidance(tiny_zero123):
    ref = torch.rand(32, 32, 3)
    return Zero123Guidance(Zero123Config(model=str(tiny_zero123)), ref, orbit_cameras(90.0, 0.0, 2.5, 40.0, 32))


def test_relative_camera_values_for_known_pairs():
    ref = orbit_cameras(90.0, 0.0, 2.5)
    targets = orbit_cameras([90.0, 90.0, 60.0, 90.0], [90.0, -90.0, 0.0, 180.0], [2.5, 2.5, 3.0, 2.5])
    cam = relative_camera(targets, ref)
    expected = torch.tensor(
        [
            [0.0, 1.0, 0.0, 0.0],  # swing towards +X: sin(+90) = +1
            [0.0, -1.0, 0.0, 0.0],  # the other way: sin(-90) = -1
            [-math.pi / 6, 0.0, 1.0, 0.5],  # 30 degrees higher (smaller polar), 0.5 further
            [0.0, 0.0, -1.0, 0.0],  # behind
        ]
    )
    torch.testing.assert_close(cam, expected, atol=1e-5, rtol=0)
    stable = relative_camera(targets, orbit_cameras(60.0, 0.0, 2.5), variant="stable-zero123")
    torch.testing.assert_close(stable[:, 3], torch.full((4,), math.radians(60.0)), atol=1e-5, rtol=0)


def test_clip_preprocessing_is_bicubic_without_antialias_and_normalised():
    img = torch.full((1, 64, 64, 3), 0.5)
    out = clip_preprocess(img, 32)
    assert out.shape == (1, 3, 32, 32)
    expected = (0.5 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor([0.26862954, 0.26130258, 0.27577711])
    torch.testing.assert_close(out[0, :, 5, 5], expected)


def test_loads_through_from_pretrained_and_keeps_the_conventions(guidance):
    assert guidance.unet.config.in_channels == 8
    assert guidance.vae.decoder is None, "the decoder is never used, so it is not kept"
    # conditioning latents: posterior mode, unscaled
    ref = torch.rand(1, 32, 32, 3)
    raw = guidance.vae.encode(ref.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()
    torch.testing.assert_close(guidance.encode(ref, scaled=False), raw)
    torch.testing.assert_close(guidance.encode(ref), raw * guidance.vae.config.scaling_factor)


def test_missing_weights_name_the_model_and_the_switch(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="no-such/zero123.*--zero123"):
        Zero123Guidance(Zero123Config(model="no-such/zero123"), torch.rand(8, 8, 3), orbit_cameras(90.0, 0.0))
    with pytest.raises(ModelNotFound, match=str(tmp_path)):
        Zero123Guidance(Zero123Config(model=str(tmp_path)), torch.rand(8, 8, 3), orbit_cameras(90.0, 0.0))


def test_cfg_uses_zero_embeddings_and_zero_latents_in_one_batched_call(guidance):
    cams = orbit_cameras(80.0, [30.0, -45.0], 2.5, 40.0, 32)
    noisy = torch.randn(2, 4, 16, 16)
    t = torch.tensor([500, 300])
    got = guidance.predict_noise(noisy, t, cams)
    tokens, cond_latents = guidance.conditioning(cams)
    with torch.no_grad():
        cond = guidance.unet(torch.cat([noisy, cond_latents], 1), t, encoder_hidden_states=tokens).sample
        uncond = guidance.unet(
            torch.cat([noisy, torch.zeros_like(cond_latents)], 1), t, encoder_hidden_states=torch.zeros_like(tokens)
        ).sample
    torch.testing.assert_close(got, uncond + 5.0 * (cond - uncond), atol=1e-5, rtol=1e-4)


def test_sds_gradient_is_w_times_noise_residual_through_the_encoder(guidance):
    cams = orbit_cameras(70.0, 60.0, 2.5, 40.0, 32)
    rgb = torch.rand(1, 32, 32, 3, requires_grad=True)
    inp = GuidanceInput(rgb, torch.ones(1, 32, 32, 1), cams, torch.ones(1, 3), step=7, total_steps=100)
    loss = guidance(inp)["sds_zero123"]
    (auto,) = torch.autograd.grad(loss, rgb)
    # the same draw by hand: t and noise come from the generator of (run seed, prior, step)
    gen = torch.Generator().manual_seed(guidance.draw_seed(7))
    lo, hi = guidance.t_range(7)
    t = (torch.rand(1, generator=gen) * (hi - lo) + lo).mul(guidance.num_train_timesteps).long()
    noise = torch.randn(1, 4, 16, 16, generator=gen)
    x = rgb.detach().requires_grad_(True)
    latents = guidance.encode(x)
    eps = guidance.predict_noise(guidance.scheduler.add_noise(latents.detach(), noise, t), t, cams)
    w = 1.0 - guidance.alphas[t]
    (manual,) = torch.autograd.grad(latents, x, grad_outputs=w.view(-1, 1, 1, 1) * (eps - noise))
    torch.testing.assert_close(auto, manual, atol=1e-6, rtol=1e-4)
    assert auto.abs().sum() > 0


def test_timestep_range_anneals(guidance):
    assert guidance.t_range(0) == (0.2, 0.98)
    lo, hi = guidance.t_range(guidance.cfg.anneal_steps // 2)
    assert hi == pytest.approx(0.79)
    assert guidance.t_range(10**6) == (0.2, 0.6)


def test_one_outline_step_with_zero123_reaches_the_nerf(tiny_zero123, tiny_cfg):
    from mpod123.stages import OutlineStage, ReferenceView
    from mpod123.bench.synthetic import render_object

    tiny_cfg.reference_view_prob = 0.0
    tiny_cfg.render.resolution = 32
    cam = orbit_cameras(90.0, 0.0, 2.5, 40.0, 32)
    rgba = render_object(cam)[0]
    rgb_white = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    guidance = Zero123Guidance(Zero123Config(model=str(tiny_zero123)), rgb_white, cam)
    stage = OutlineStage(tiny_cfg, ReferenceView(rgba, cam), guidance)
    before = [p.detach().clone() for p in stage.field.parameters()]
    losses = stage.train_step()
    assert "sds_zero123" in losses and math.isfinite(losses["sds_zero123"])
    assert set(losses) <= {"sds_zero123", "entropy", "orientation", "normal_smoothness"}
    moved = [not torch.equal(a, b) for a, b in zip(before, stage.field.parameters())]
    assert all(moved), "every NeRF parameter received a gradient step"


def test_the_tiny_camera_projection_has_the_published_layout_and_our_class_loads_it(tiny_zero123):
    """The tiny checkpoint writes clip_camera_projection as the zero123 pipelines publish it (their class name,
    one ``proj`` Linear), not through our class; our CameraProjection must load it as it loads theirs."""
    import json

    from safetensors.torch import load_file

    folder = tiny_zero123 / "clip_camera_projection"
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "CLIPCameraProjection" and config["additional_embeddings"] == 4
    tensors = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    dim = config["embedding_dim"]
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {"proj.weight": (dim, dim + 4), "proj.bias": (dim,)}
    loaded = CameraProjection.from_pretrained(tiny_zero123, subfolder="clip_camera_projection")
    assert torch.equal(loaded.proj.weight, tensors["proj.weight"]) and torch.equal(loaded.proj.bias, tensors["proj.bias"])
    x = torch.randn(2, dim + 4)
    torch.testing.assert_close(loaded(x), x @ tensors["proj.weight"].T + tensors["proj.bias"])
