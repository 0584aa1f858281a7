"""The training recipe where the paper is silent: regularisers, shading, camera range, MRCA mask
resizing, L_nvm targets, DMTet box, SDS seeding, fp16 textual inversion and reference resolution."""

from __future__ import annotations

import math

import pytest
import torch

from mpod123.camera import orbit_cameras
from mpod123.config import (
    PRESETS,
    DetailStageConfig,
    OutlineStageConfig,
    detail_preset,
    outline_preset,
    pipeline_preset,
)
from mpod123.geometry import DMTet, tet_grid
from mpod123.geometry.dmtet import density_box
from mpod123.guidance import MultiViewSupervision
from mpod123.guidance.mrca import layer_mask
from mpod123.guidance.sds import ScoreDistillation
from mpod123.rendering import MeshRenderer
from mpod123.stages import OutlineStage, ReferenceView
from mpod123.stages.regularisers import normal_regularisers, opacity_entropy
from mpod123.stages.shading import Lighting, shade
from mpod123.bench.synthetic import turntable_dataset


# ------------------------------------------------------------------ item 1: regularisers
@pytest.fixture(scope="module")
def views():
    return turntable_dataset(8, 16)


def _outline(views, **kw) -> OutlineStage:
    cfg = outline_preset("draft")
    cfg.render.resolution, cfg.preview_every, cfg.checkpoint_every = 16, 0, 0
    for k, v in kw.items():
        setattr(cfg, k, v)
    ref = ReferenceView(views.images[0], views.cameras[0])
    return OutlineStage(cfg, ref, MultiViewSupervision(views.images, views.cameras))


def _term(stage: OutlineStage, name: str, cams) -> torch.Tensor:
    if name == "entropy":
        out = stage.renderer.render(cams, torch.ones(len(cams), 3))
        return opacity_entropy(out.opacity)
    name, _, method = name.partition("/")
    gen = torch.Generator().manual_seed(7)  # the same rays and offsets every time
    return normal_regularisers(stage.renderer, cams, 96, gen, 0.02, normal_method=method)[name]


def _grads(stage: OutlineStage, loss: torch.Tensor) -> torch.Tensor:
    params = list(stage.field.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


@pytest.mark.parametrize("name", ["entropy", "orientation/finite_difference", "orientation/analytic",
                                  "normal_smoothness/finite_difference", "normal_smoothness/analytic"])
def test_each_regulariser_lowers_its_own_term_and_changes_the_fields_gradient(views, name):
    stage = _outline(views)
    cams = views.cameras[1:3].resized(12, 12)
    before = _term(stage, name, cams)
    assert before.item() > 0
    # it changes the field's gradient: the photometric gradient alone differs from it plus the term
    out = stage.renderer.render(cams, torch.ones(2, 3))
    photometric = ((out.rgb - 0.5) ** 2).mean()
    g_plain = _grads(stage, photometric)
    out = stage.renderer.render(cams, torch.ones(2, 3))
    g_reg = _grads(stage, ((out.rgb - 0.5) ** 2).mean() + _term(stage, name, cams))
    assert (g_reg - g_plain).abs().max() > 1e-6
    # and descending on it alone lowers it (finite-difference normals average the finest levels
    # over their step, so their smoothness term falls more slowly: 10 steps for every term)
    opt = torch.optim.Adam(stage.field.parameters(), lr=2e-2)
    for _ in range(10):
        opt.zero_grad()
        _term(stage, name, cams).backward()
        opt.step()
    after = _term(stage, name, cams)
    assert after.item() < 0.9 * before.item(), (name, before.item(), after.item())


def test_outline_steps_report_the_regularisers_with_magic123s_entropy_ramp(views):
    stage = _outline(views, steps=8, entropy_weight=1e-3, entropy_ramp=0.5, regulariser_rays=32, regulariser_every=1)
    seen = [stage.train_step() for _ in range(6)]
    assert all({"orientation", "normal_smoothness", "entropy"} <= set(s) for s in seen)
    assert seen[0]["entropy"] == 0.0 and seen[5]["entropy"] > 0.0, "ramped in from zero"
    assert stage.entropy_weight() == pytest.approx(1e-3)  # step 6 of 8 is past half: full weight
    sparse = _outline(views, steps=8, regulariser_rays=32, regulariser_every=4)
    seen = [sparse.train_step() for _ in range(5)]
    assert ["orientation" in s for s in seen] == [True, False, False, False, True], "every 4th step"
    off = _outline(views, steps=2, entropy_weight=0.0, orientation_weight=0.0, normal_smoothness_weight=0.0)
    off.step = 1  # a novel-view step
    assert not {"orientation", "normal_smoothness", "entropy"} & set(off.train_step())


def test_paper_defaults_name_the_reference_weights():
    cfg = OutlineStageConfig()
    assert (cfg.entropy_weight, cfg.orientation_weight, cfg.normal_smoothness_weight) == (1e-3, 1e-2, 0.5)
    assert cfg.encoding_lr_scale == 10.0, "every reference trains the hash grid at 10x"
    d = DetailStageConfig()
    assert d.sdf_lr == d.deform_lr == d.lr == 1e-3, "the paper's stated learning rate"
    assert pipeline_preset("paper").sd.weight == 0.1


# ------------------------------------------------------------------ item 3: shading
def _sphere_mesh():
    from mpod123.geometry import marching_tets

    grid = tet_grid(24, 1.0)
    sdf = grid.vertices.norm(dim=-1) - 0.6
    return marching_tets(grid.vertices, sdf, grid.tets, backend="torch")


def test_a_lit_flat_coloured_sphere_is_not_flat_and_the_unlit_one_is():
    mesh = _sphere_mesh()
    cams = orbit_cameras(90.0, 30.0, 2.5, 40.0, 48)
    colour = lambda p: torch.full_like(p, 0.6)  # noqa: E731
    renderer = MeshRenderer("torch")
    plain = renderer.render(mesh, cams, colour, torch.ones(1, 3))
    inside = plain.opacity[0, ..., 0] > 0.999  # away from the antialiased silhouette
    assert inside.sum() > 500
    assert plain.rgb[0][inside].std() < 1e-5, "albedo alone is flat"
    black = renderer.render(mesh, cams, colour, torch.zeros(1, 3), with_normals=True)
    light = Lighting(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([0.1]), torch.tensor([False]))
    lit = shade(black.rgb, black.opacity, black.normals, torch.ones(1, 3), light)
    values = lit[0][inside][:, 0]
    assert values.std() > 0.05 and values.max() > 0.5 and values.min() < 0.3, "Lambert: bright centre, dark rim"
    # textureless: the same shading on white
    white = shade(black.rgb, black.opacity, black.normals, torch.ones(1, 3),
                  Lighting(light.direction, light.ambient, torch.tensor([True])))
    assert white[0][inside].max() > values.max()
    # background untouched
    outside = (plain.opacity[0, ..., 0] == 0)
    torch.testing.assert_close(lit[0][outside], torch.ones_like(lit[0][outside]))


def test_light_draws_sit_near_the_camera_and_follow_the_generator():
    cams = orbit_cameras(90.0, [0.0, 90.0, 180.0, 270.0] * 50, 2.5, 40.0, 8)
    a = Lighting.draw(cams, torch.Generator().manual_seed(1))
    b = Lighting.draw(cams, torch.Generator().manual_seed(1))
    assert torch.equal(a.direction, b.direction)
    toward_camera = (a.direction * torch.nn.functional.normalize(cams.c2w[:, :3, 3], dim=-1)).sum(-1)
    assert toward_camera.mean() > 0.8
    assert 0.1 <= a.ambient.min() and a.ambient.max() <= 1.0
    assert 0.1 < a.textureless.float().mean() < 0.3


def test_detail_stage_lights_only_views_a_diffusion_prior_scores(views):
    from mpod123.stages import DetailStage

    outline = _outline(views)
    cfg = detail_preset("draft")
    cfg.resolution, cfg.nvm_mask_resolution, cfg.preview_every, cfg.checkpoint_every = 24, 24, 0, 0
    cfg.dmtet.resolution, cfg.dmtet.init_threshold, cfg.reference_view_prob = 16, 0.5, 0.0
    cfg.textureless_prob = 0.0
    seen = []

    class Prior:  # scores whatever it is shown, like an SDS prior (not a CameraProposer)
        def __call__(self, inp):
            seen.append(inp.rgb.detach())
            return {}

    ref = ReferenceView(views.images[0], views.cameras[0])
    lit = DetailStage(cfg, ref, Prior(), outline.field, outline.opacity)
    assert lit.shades_novel_views()
    cfg_unlit = detail_preset("draft")
    cfg_unlit.__dict__.update({k: v for k, v in cfg.__dict__.items() if k != "shading"})
    cfg_unlit.shading = "albedo"
    unlit = DetailStage(cfg_unlit, ref, Prior(), outline.field, outline.opacity)
    mesh = lit.mesh()
    cams = views.cameras[2:3].resized(24, 24)
    bg = torch.ones(1, 3)
    a = lit.render_novel(mesh, cams, bg)
    b = unlit.render_novel(mesh, cams, bg)
    covered = b.opacity[0, ..., 0] > 0.99
    assert covered.sum() > 20
    assert (a.rgb[0][covered] <= b.rgb[0][covered] + 1e-5).all(), "light only darkens the albedo"
    assert (b.rgb[0][covered] - a.rgb[0][covered]).abs().max() > 0.02
    supervised = DetailStage(cfg, ref, MultiViewSupervision(views.images, views.cameras), outline.field, outline.opacity)
    assert not supervised.shades_novel_views(), "views with known images stay unlit"


# ------------------------------------------------------------------ item 7: camera range
@pytest.mark.parametrize("preset", PRESETS)
def test_the_polar_range_is_centred_on_the_reference_view(preset):
    for cfg in (outline_preset(preset), detail_preset(preset)):
        lo, hi = cfg.views.polar_range_deg
        assert (lo + hi) / 2 == pytest.approx(cfg.camera.reference_polar_deg)
        assert (lo, hi) == (45.0, 135.0), "Magic123's theta range"


# ------------------------------------------------------------------ item 8: MRCA masks
def test_mrca_8x8_mask_of_a_centred_square_is_centred():
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1.0  # a centred square, half the side
    m = layer_mask(mask, 64).reshape(8, 8)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:6, 2:6] = True
    assert torch.equal(m, expected)
    assert torch.equal(m, m.flip(0)) and torch.equal(m, m.flip(1)), "symmetric: no half-cell shift"
    # a square off the block grid: a cell is inside when most of it is
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 13:51, 13:51] = 1.0
    m = layer_mask(mask, 64).reshape(8, 8)
    assert torch.equal(m, m.flip(0)) and torch.equal(m, m.flip(1))
    assert m.sum() == 16, "cells 1 and 6 are 3/8 covered: outside"


# ------------------------------------------------------------------ item 9: L_nvm targets
def test_nvm_targets_are_bilinear_then_thresholded():
    from mpod123.stages.detail import DetailStage

    class Probe:
        cfg = DetailStageConfig(nvm_mask_resolution=8)
        device = torch.device("cpu")

        @staticmethod
        def stage1_masks(cams):
            yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
            d = ((yy - 3.5) ** 2 + (xx - 3.5) ** 2).sqrt()
            return (4.0 - d).clamp(0, 1)[None]  # an opacity ramp crossing 0.5 on the circle d = 3.5

    cams = orbit_cameras(90.0, 0.0, 2.5, 40.0, 8)
    target = DetailStage.nvm_targets(Probe(), cams, 64, 64)[0, ..., 0]
    assert target.shape == (64, 64) and set(target.unique().tolist()) == {0.0, 1.0}
    small = Probe.stage1_masks(cams)[None].ge(0.5).float()
    nearest = torch.nn.functional.interpolate(small, size=(64, 64), mode="nearest")[0, 0]
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    y, x = (yy + 0.5) / 8 - 0.5, (xx + 0.5) / 8 - 0.5  # the big pixels' centres in small-pixel coordinates
    true_disk = ((y - 3.5) ** 2 + (x - 3.5) ** 2).sqrt() <= 3.5
    err_bilinear = (target.bool() ^ true_disk).float().mean()
    err_nearest = (nearest.bool() ^ true_disk).float().mean()
    assert err_bilinear < err_nearest


# ------------------------------------------------------------------ item 10: DMTet box
def test_dmtet_grid_fits_the_density_box():
    density = lambda x: 10.0 * (x.norm(dim=-1) < 0.4).float()  # noqa: E731
    lo, hi = density_box(density, 1.0, 0.5, margin=0.1, resolution=64)
    assert (hi - lo).max() < 1.2 and (lo < -0.39).all() and (hi > 0.39).all()
    grid = tet_grid(16, 1.0)
    boxed = DMTet(grid, box=(lo, hi))
    v = boxed.base_vertices
    torch.testing.assert_close(v.amin(0), lo)
    torch.testing.assert_close(v.amax(0), hi)
    sdf = v.norm(dim=-1) - 0.4
    boxed.sdf.data.copy_(sdf)
    plain = DMTet(grid)
    plain.sdf.data.copy_(grid.vertices.norm(dim=-1) - 0.4)
    assert boxed.mesh().n_vertices > 2 * plain.mesh().n_vertices, "more cells across the object"
    # nothing dense: the whole cube
    lo, hi = density_box(lambda x: torch.zeros(len(x)), 1.0, 0.5)
    assert torch.equal(lo, -torch.ones(3)) and torch.equal(hi, torch.ones(3))


# ------------------------------------------------------------------ item 11: seeding
class _Draws(ScoreDistillation):
    def __init__(self, seed: int, stream: str) -> None:
        self.seed, self.stream = seed, stream
        self.num_train_timesteps, self.device = 1000, torch.device("cpu")


def test_sds_draws_follow_the_run_seed_and_the_stage():
    shape = torch.Size([2, 4, 8, 8])
    a = _Draws(1, "zero123").draw(5, shape, 0.02, 0.98)
    same = _Draws(1, "zero123").draw(5, shape, 0.02, 0.98)
    other_seed = _Draws(2, "zero123").draw(5, shape, 0.02, 0.98)
    other_stage = _Draws(1, "stable_diffusion").draw(5, shape, 0.02, 0.98)
    assert torch.equal(a[0], same[0]) and torch.equal(a[1], same[1])
    assert not torch.equal(a[1], other_seed[1]) and not torch.equal(a[1], other_stage[1])
    assert not torch.equal(a[1], _Draws(1, "zero123").draw(6, shape, 0.02, 0.98)[1])


def test_with_seed_reaches_both_priors():
    cfg = pipeline_preset("draft").with_seed(42)
    assert cfg.zero123.seed == cfg.sd.seed == cfg.outline.seed == cfg.detail.seed == 42


# ------------------------------------------------------------------ item 4: reference resolution
def test_the_stage2_reference_keeps_detail_a_256_image_cannot(tmp_path):
    import numpy as np
    from PIL import Image

    from mpod123.config import PreprocessConfig
    from mpod123.guidance import resize_rgba
    from mpod123.pipeline.preprocess import preprocess

    side = 614  # 60% of 1024: framed at scale 1, so the pattern is not resampled
    photo = np.zeros((800, 800, 4), np.uint8)
    yy, xx = np.mgrid[:side, :side]
    checker = (((yy // 2) + (xx // 2)) % 2 * 255).astype(np.uint8)
    photo[93 : 93 + side, 93 : 93 + side, 0] = checker
    photo[93 : 93 + side, 93 : 93 + side, 1] = checker
    photo[93 : 93 + side, 93 : 93 + side, 2] = checker
    photo[93 : 93 + side, 93 : 93 + side, 3] = 255
    Image.fromarray(photo, "RGBA").save(tmp_path / "checker.png")
    pre = preprocess(tmp_path / "checker.png", PreprocessConfig(size=1024))
    assert pre.rgba.shape == (1024, 1024, 4)
    rgba = torch.from_numpy(pre.rgba)
    inner = rgba[300:700, 300:700, 0]
    assert inner.std() > 0.45, "the 2-px checkerboard survives at 1024"
    via256 = resize_rgba(resize_rgba(rgba[None], 256, 256), 1024, 1024)[0, 300:700, 300:700, 0]
    assert via256.std() < 0.05, "at 256 it is grey"
    # each consumer downsamples with area filtering: stage 1 (128) sees the mean grey
    small = resize_rgba(rgba[None], 128, 128)[0, 40:88, 40:88, 0]
    assert (small - 0.5).abs().max() < 0.05


# ------------------------------------------------------------------ item 2: fp16 textual inversion
@pytest.fixture(scope="module")
def tiny_sd_dir(tmp_path_factory):
    pytest.importorskip("diffusers")
    from ...tiny_models import save_tiny_stable_diffusion

    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("sd16"))


def test_fp16_textual_inversion_keeps_a_gradient_where_the_unscaled_loss_underflows(tiny_sd_dir):
    """A real batch averages over 16x4x64x64 latents through a deep UNet; the tiny UNet on one 16x16
    latent is far from that, so the loss is scaled down by 2^-16 to put its gradients where the
    real ones sit (the fp32 gradient here is about 3e-7). fp16 then flushes them all to zero
    without the loss scale, and keeps them with it."""
    from mpod123.guidance.stable_diffusion import load_stable_diffusion
    from mpod123.guidance.textual_inversion import TextualInversion
    from mpod123.config import TextualInversionConfig

    class RealSizedMean(TextualInversion):
        def loss(self, *batch):
            return super().loss(*batch) * 2.0**-16

    ref = torch.zeros(32, 32, 4)
    ref[8:24, 8:24] = torch.tensor([0.9, 0.3, 0.1, 1.0])
    grads, pool = {}, None
    for dtype, scale in (("float32", None), ("float16", 1.0), ("float16", None)):
        models = load_stable_diffusion(str(tiny_sd_dir), dtype=dtype)
        ti = RealSizedMean(TextualInversionConfig(batch_size=1, augmentations=1, resolution=32, loss_scale=scale), models)
        if pool is None:
            pool = ti.encode_pool(ref)
        ti.latent_pool = pool  # the same latents for all three: only the UNet's backward differs
        ti.step(ti.draw(torch.Generator().manual_seed(0)), ti.optimizer())
        grads[(dtype, scale)] = ti.vector.grad.clone() / ti.loss_scale
        if dtype == "float16" and scale is None:
            assert ti.loss_scale == 1024.0, "fp16 picks the constant scale by itself"
        ti.close()
    fp32, unscaled, scaled = grads[("float32", None)], grads[("float16", 1.0)], grads[("float16", None)]
    assert fp32.abs().max() > 0
    assert (unscaled == 0).all(), "without the scale every gradient underflows in fp16"
    assert (scaled != 0).float().mean() > 0.9
    assert torch.nn.functional.cosine_similarity(scaled, fp32, dim=0) > 0.95


def test_the_detail_grid_fits_the_surfaces_density_level_not_the_haze():
    """A dense ball (density 30 within 0.4) in faint haze (density 1 everywhere): the box of the
    surface's own level (Magic123's) spans the ball; a box at density 0.5 spans the haze, i.e.
    the whole cube, and leaves the grid no finer than without a box."""
    from mpod123.fields import NeRFField
    from mpod123.stages import DetailStage

    class HazyBall(NeRFField):
        def density(self, x: torch.Tensor) -> torch.Tensor:
            return 1.0 + 29.0 * (x.norm(dim=-1) < 0.4).float()

    views = turntable_dataset(4, 16)
    nerf = HazyBall(outline_preset("draft").nerf)
    boxes = {}
    for level in (None, 0.5):
        cfg = detail_preset("draft")
        cfg.dmtet.resolution, cfg.dmtet.init_threshold, cfg.dmtet.fit_threshold = 16, 10.0, level
        stage = DetailStage(cfg, ReferenceView(views.images[0], views.cameras[0]),
                            MultiViewSupervision(views.images, views.cameras), nerf, lambda c: torch.zeros(len(c), 1, 1))
        v = stage.dmtet.base_vertices
        boxes[level] = (v.amin(0), v.amax(0))
        assert stage.init_threshold == 10.0
    lo, hi = boxes[None]
    assert (lo < -0.39).all() and (hi > 0.39).all() and (hi - lo).max() < 1.1, (lo, hi)
    lo, hi = boxes[0.5]
    assert torch.equal(lo, -torch.ones(3)) and torch.equal(hi, torch.ones(3))
