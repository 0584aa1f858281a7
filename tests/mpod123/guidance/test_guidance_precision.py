"""Half-precision guidance: the resize runs in float32, the VAE encodes in float32 when its
config says ``force_upcast``, and MRCA upcasts its logits/softmax as diffusers' attention does."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers.models.attention_processor import Attention, AttnProcessor  # noqa: E402

from mpod123.camera import orbit_cameras  # noqa: E402
from mpod123.config import StableDiffusionConfig  # noqa: E402
from mpod123.guidance import GuidanceInput  # noqa: E402
from mpod123.guidance.mrca import MaskState, MRCAAttnProcessor  # noqa: E402
from mpod123.guidance.stable_diffusion import StableDiffusionGuidance, load_stable_diffusion  # noqa: E402
from mpod123.guidance.textual_inversion import add_token  # noqa: E402

from ...tiny_models import save_tiny_stable_diffusion  # noqa: E402


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("sd-fp16"))


def _guidance(tiny_sd, force_upcast: bool):
    models = load_stable_diffusion(str(tiny_sd), "cpu", "float16")
    models.vae.register_to_config(force_upcast=force_upcast)
    add_token(models, "<e>", torch.randn(32))
    return StableDiffusionGuidance(StableDiffusionConfig(model=str(tiny_sd), mrca=False), models), models


@pytest.mark.parametrize("force_upcast", [True, False])
def test_fp16_renders_are_resized_in_float32_and_encoded_as_the_vae_config_asks(tiny_sd, monkeypatch, force_upcast):
    guidance, models = _guidance(tiny_sd, force_upcast)
    resized = []
    interpolate = torch.nn.functional.interpolate

    def spy(x, *a, **kw):
        resized.append((x.shape[-1], x.dtype))  # the UNet's own upsamplers land here too
        return interpolate(x, *a, **kw)

    monkeypatch.setattr(torch.nn.functional, "interpolate", spy)
    seen = []
    vae, dtype = guidance.encoder()
    vae.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    size = guidance.image_size * 2  # larger than the model: the antialiased downsize
    rgb = torch.rand(2, size, size, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    cams = orbit_cameras(80.0, [0.0, 40.0], 2.5, 40.0, size)
    loss = guidance(GuidanceInput(rgb, torch.ones(2, size, size, 1), cams, torch.ones(2, 3), 5, 100))["sds_dai"]
    loss.backward()
    assert [d for n, d in resized if n == size] == [torch.float32], "the 2x downsize ran in float32"
    assert rgb.grad is not None and rgb.grad.dtype == torch.float32 and torch.isfinite(rgb.grad).all()
    assert rgb.grad.abs().sum() > 0
    if force_upcast:
        assert dtype == torch.float32 and seen == [torch.float32], "encoded by a float32 copy of the VAE"
        assert vae is not models.vae and models.vae.dtype == torch.float16, "the shared VAE is left as loaded"
        assert guidance.encoder()[0] is vae, "the copy is made once"
    else:
        assert dtype == torch.float16 and vae is models.vae and seen == [torch.float16]
    guidance.close()


def _attention(upcast: bool) -> Attention:
    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=16, heads=2, dim_head=16,
                     upcast_attention=upcast, upcast_softmax=upcast)
    with torch.no_grad():  # logits of about 1e5: beyond float16's range (65504)
        attn.to_q.weight.mul_(150.0)
        attn.to_k.weight.mul_(150.0)
    return attn.half()


@pytest.mark.parametrize("upcast", [True, False])
def test_mrca_follows_the_layers_upcast_flags_like_diffusers_attention(upcast):
    attn = _attention(upcast)
    g = torch.Generator().manual_seed(1)
    hidden = (torch.randn(2, 16, 32, generator=g) * 3).half()
    context = (torch.randn(2, 7, 16, generator=g) * 3).half()
    scores = (attn.to_q(hidden).float() @ attn.to_k(context).float().transpose(1, 2)).abs().max() * attn.scale
    assert scores > 2 * 65504, "the test's logits overflow in float16"
    stock = AttnProcessor()(attn, hidden, context)
    state = MaskState(token_indices=[3], record=True)  # record: MRCA computes the attention itself
    ours = MRCAAttnProcessor(state, "attn2", stock=AttnProcessor())(attn, hidden, context)
    assert state.recorded, "MRCA's own path ran"
    if upcast:
        assert torch.isfinite(stock).all()
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, stock, atol=2e-3, rtol=2e-3)
    else:  # diffusers' attention overflows the same way without the flags: MRCA matches it
        assert torch.isfinite(ours).all() == torch.isfinite(stock).all()
