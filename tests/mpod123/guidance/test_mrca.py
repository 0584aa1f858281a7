"""Mask Rectified Cross-Attention on a tiny UNet: exact zeros where masked, nothing else touched."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import UNet2DConditionModel  # noqa: E402

from mpod123.guidance.mrca import MaskState, install_mrca, layer_mask, uninstall_mrca  # noqa: E402

TOKEN = 3


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    ).eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 16, 16, generator=g)  # [cond, uncond]
    text = torch.randn(2, 8, 32, generator=g)
    mask = torch.ones(1, 1, 16, 16)
    mask[..., :, :7] = 0.0  # the left part is outside the outline
    return latents, text, mask


def test_layer_mask_follows_each_resolution():
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 8:, :] = 1
    for seq, side in ((256, 16), (64, 8), (16, 4)):
        m = layer_mask(mask, seq).reshape(side, side)
        assert m[: side // 2].sum() == 0 and m[side // 2 :].all()


def test_mrca_zeroes_e_exactly_where_masked_in_every_cross_attention_layer(unet):
    latents, text, mask = _inputs()
    state = MaskState(mask=mask, token_indices=[TOKEN], record=True)
    names = install_mrca(unet, state)
    try:
        with torch.no_grad():
            unet(latents, 10, encoder_hidden_states=text)
    finally:
        uninstall_mrca(unet)
    assert {n for n, *_ in state.recorded} == set(names) and len(names) >= 3
    sizes = set()
    for name, heads, probs, plain in state.recorded:
        seq = probs.shape[1]
        sizes.add(seq)
        blocked = ~layer_mask(mask, seq)[0]  # (seq,)
        cond = probs[:heads]  # rows of batch element 0, all heads
        assert torch.all(cond[:, blocked, TOKEN] == 0.0), name
        assert torch.all(cond[:, ~blocked, :] == plain[:heads][:, ~blocked, :]), "unmasked positions untouched"
        others = [t for t in range(probs.shape[2]) if t != TOKEN]
        ratio = cond[:, blocked][..., others] / plain[:heads][:, blocked][..., others]
        torch.testing.assert_close(ratio, ratio[..., :1].expand_as(ratio)), "other tokens keep their proportions"
        assert torch.equal(probs[heads:], plain[heads:]), "the unconditional half is untouched"
        assert not torch.isnan(probs).any()
    assert len(sizes) >= 2, "masks were resized to several attention resolutions"


def test_all_ones_mask_is_bitwise_identical_to_no_mrca(unet):
    latents, text, _ = _inputs()
    with torch.no_grad():
        reference = unet(latents, 10, encoder_hidden_states=text).sample
        install_mrca(unet, MaskState(mask=torch.ones(1, 1, 16, 16), token_indices=[TOKEN]))
        try:
            again = unet(latents, 10, encoder_hidden_states=text).sample
        finally:
            uninstall_mrca(unet)
    assert torch.equal(reference, again)


def test_mrca_changes_the_conditional_output_only(unet):
    latents, text, mask = _inputs()
    with torch.no_grad():
        plain = unet(latents, 10, encoder_hidden_states=text).sample
        install_mrca(unet, MaskState(mask=mask, token_indices=[TOKEN]))
        try:
            masked = unet(latents, 10, encoder_hidden_states=text).sample
        finally:
            uninstall_mrca(unet)
    assert not torch.allclose(plain[0], masked[0])
    torch.testing.assert_close(plain[1], masked[1], atol=1e-5, rtol=1e-5)


def test_fp16_logits_use_the_finite_minimum(unet):
    latents, text, mask = _inputs()
    half = unet.to(torch.float16) if torch.cuda.is_available() else None
    if half is None:
        # on the CPU: the same masking rule in float16 arithmetic, checked directly
        scores = torch.randn(4, 16, 8, dtype=torch.float16)
        filled = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool), torch.finfo(torch.float16).min)
        assert not torch.isnan(filled.softmax(-1)).any()
        assert torch.isnan(scores.masked_fill(torch.ones_like(scores, dtype=torch.bool), float("-inf")).softmax(-1)).all()
        return
    try:
        state = MaskState(mask=mask.half().cuda(), token_indices=[TOKEN], record=True)
        install_mrca(half.cuda(), state)
        with torch.no_grad():
            out = half(latents.half().cuda(), 10, encoder_hidden_states=text.half().cuda()).sample
        assert not torch.isnan(out).any()
    finally:
        uninstall_mrca(unet)
        unet.float().cpu()


def test_e_is_found_through_the_tokenizer_not_at_a_fixed_index(tmp_path):
    from transformers import CLIPTokenizer

    from mpod123.guidance.mrca import find_token_indices

    from ...tiny_models import save_tiny_clip_tokenizer

    tok = CLIPTokenizer.from_pretrained(save_tiny_clip_tokenizer(tmp_path / "tok"), model_max_length=77)
    with pytest.raises(ValueError, match="no token"):
        find_token_indices(tok, "a photo of <e>")
    tok.add_tokens(["<e>"])
    e_id = tok.convert_tokens_to_ids("<e>")
    for prompt in ("a high-resolution dslr image of <e>", "<e> on a table", "dslr <e>, then <e> again"):
        found = find_token_indices(tok, prompt)
        ids = tok(prompt, padding="max_length", max_length=77).input_ids
        assert found and all(ids[i] == e_id for i in found)
        assert sum(i == e_id for i in ids) == len(found)
    short, long = find_token_indices(tok, "<e>"), find_token_indices(tok, "a high-resolution dslr image of <e>")
    assert short != long, "the index depends on the prompt"
    with pytest.raises(ValueError, match="does not occur"):
        find_token_indices(tok, "no token here")


def _run(unet, state, latents, text):
    install_mrca(unet, state)
    try:
        with torch.no_grad():
            return unet(latents, 10, encoder_hidden_states=text).sample
    finally:
        uninstall_mrca(unet)


def test_on_the_gpu_branch_mrca_decides_once_per_mask_and_gives_the_same_output(unet):
    from mpod123.runtime.syncs import SyncCounter, gpu_paths

    latents, text, mask = _inputs()
    cpu = _run(unet, MaskState(mask=mask, token_indices=[TOKEN]), latents, text)
    with torch.no_grad():
        stock = unet(latents, 10, encoder_hidden_states=text).sample
    with gpu_paths(), SyncCounter() as counter:
        gpu = _run(unet, MaskState(mask=mask, token_indices=[TOKEN]), latents, text)
        ones = _run(unet, MaskState(mask=torch.ones(1, 1, 16, 16), token_indices=[TOKEN]), latents, text)
    assert counter.total == 0, dict(counter.counts)
    # SDPA under the mask on the GPU's branch, the explicit softmax on the CPU's: the same attention
    torch.testing.assert_close(gpu, cpu, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(gpu[0], stock[0], atol=1e-4), "and it does mask"
    # an all-ones mask is applied without a read-back: it masks nothing, so the output is the stock one
    torch.testing.assert_close(ones, stock, atol=1e-5, rtol=1e-5)


def test_the_per_layer_masks_are_built_once_per_mask():
    state = MaskState(mask=torch.ones(1, 1, 16, 16), token_indices=[TOKEN])
    a = state.blocked(2, 64, 8, 2, torch.device("cpu"))
    assert state.blocked(2, 64, 8, 2, torch.device("cpu")) is a
    assert a.shape == (4, 64, 8) and not a.any()
    state.mask = torch.zeros(1, 1, 16, 16)
    b = state.blocked(2, 64, 8, 2, torch.device("cpu"))
    assert b is not a and b[:2, :, TOKEN].all() and not b[2:].any() and b[..., TOKEN + 1].sum() == 0
