"""The recipe, round two: stage 1's coarse-to-fine band, its finite-difference step and view range;
stage 2's texture learning rate, novel-view backgrounds and shading normals; the presets and the
old values behind ``--set``."""

from __future__ import annotations

import pytest
import torch

from mpod123.config import (
    DetailStageConfig,
    OutlineStageConfig,
    PipelineConfig,
    detail_preset,
    outline_preset,
    pipeline_preset,
)
from mpod123.config.overrides import apply_overrides
from mpod123.fields.hash_grid import level_cell_size
from mpod123.guidance import MultiViewSupervision
from mpod123.stages import DetailStage, OutlineStage, ReferenceView
from mpod123.bench.synthetic import turntable_dataset


@pytest.fixture(scope="module")
def views():
    return turntable_dataset(8, 16)


def _outline(views, guidance=None, **kw) -> OutlineStage:
    cfg = outline_preset("draft")
    cfg.render.resolution, cfg.preview_every, cfg.checkpoint_every = 16, 0, 0
    for k, v in kw.items():
        setattr(cfg, k, v)
    ref = ReferenceView(views.images[0], views.cameras[0])
    return OutlineStage(cfg, ref, guidance or MultiViewSupervision(views.images, views.cameras))


# ------------------------------------------------------------------ stage 1
def test_the_band_follows_threestudios_magic123_coarse_schedule(views):
    """16 levels over 10000 steps: 8 until step 2000, then one more every 300 steps, all at 4400."""
    stage = _outline(views, steps=10_000, progressive_band=True)  # draft turns it off
    stage.cfg.nerf.hash_grid.n_levels = 16  # the schedule only reads the count
    got = {s: stage.band_levels(s) for s in (0, 1999, 2000, 2299, 2300, 2600, 4399, 4400, 9999)}
    assert got == {0: 8, 1999: 8, 2000: 8, 2299: 8, 2300: 9, 2600: 10, 4399: 15, 4400: 16, 9999: 16}
    stage.cfg.progressive_band = False
    assert stage.band_levels(0) == 16


def test_a_step_narrows_the_band_and_the_normal_step_is_one_cell_of_its_finest_level(views):
    stage = _outline(views, steps=100, progressive_band=True, normal_eps_cells=1.0)  # draft turns both off
    hg = stage.cfg.nerf.hash_grid  # draft: 8 levels
    stage.train_step()
    assert stage.field.encoding.active_levels == 4
    assert stage.normal_step() == pytest.approx(level_cell_size(hg, 3))
    stage.step = 50
    stage.train_step()
    assert stage.field.encoding.active_levels == 8
    assert stage.normal_step() == pytest.approx(level_cell_size(hg, 7))
    stage.cfg.normal_eps_cells = None
    assert stage.normal_step() == 0.01, "None: the fixed step, as before"


def test_progressive_views_widen_from_the_reference_view():
    class Prior:  # scores whatever it is shown (not a CameraProposer), like an SDS prior
        def __call__(self, inp):
            return {}

    data = turntable_dataset(4, 16)
    stage = _outline(data, Prior(), steps=100, progressive_view=True)
    polar, azimuth = stage.view_ranges()
    assert polar == pytest.approx((81.0, 99.0)) and azimuth == pytest.approx((-36.0, 36.0))
    cams = [stage.novel_cameras(stage.guidance, 16)[0] for _ in range(40)]
    z = torch.stack([c.c2w[0, :3, 3] for c in cams])
    assert (z[:, 2] > 0).all(), "every early view sees the front"
    stage.step = 40
    assert stage.view_ranges() == ((45.0, 135.0), (-180.0, 180.0))
    stage.cfg.progressive_view, stage.step = False, 0
    assert stage.view_ranges() == ((45.0, 135.0), (-180.0, 180.0))


# ------------------------------------------------------------------ stage 2
def _detail(views, guidance, **kw) -> DetailStage:
    outline = _outline(views)
    cfg = detail_preset("draft")
    cfg.resolution, cfg.nvm_mask_resolution, cfg.preview_every, cfg.checkpoint_every = 24, 24, 0, 0
    cfg.dmtet.resolution, cfg.dmtet.init_threshold, cfg.reference_view_prob = 16, 0.5, 0.0
    for k, v in kw.items():
        setattr(cfg, k, v)
    return DetailStage(cfg, ReferenceView(views.images[0], views.cameras[0]), guidance, outline.field, outline.opacity)


def test_the_texture_hash_grid_trains_at_ten_times_the_lr_and_novel_views_get_random_backgrounds(views):
    seen = []

    class Prior:
        def __call__(self, inp):
            seen.append(inp.background.detach().clone())
            return {"sds": (inp.rgb * 0).sum()}

    stage = _detail(views, Prior(), texture_encoding_lr_scale=10.0, novel_background="random")  # draft: 1, white
    lrs = {id(p): g["lr"] for g in stage.optimizer.param_groups for p in g["params"]}
    assert lrs[id(stage.texture.encoding.params)] == pytest.approx(10 * stage.cfg.lr)
    assert lrs[id(stage.texture.color_mlp.net[0].weight)] == pytest.approx(stage.cfg.lr)
    for _ in range(3):
        stage.train_step()
    colours = torch.cat(seen)
    assert len(colours) == 3 and (colours != 1.0).any() and colours.std(0).max() > 0.05
    old = _detail(views, Prior(), texture_encoding_lr_scale=1.0, novel_background="white")
    seen.clear()
    old.train_step()
    assert torch.equal(seen[0], torch.ones(1, 3))
    assert {g["lr"] for g in old.optimizer.param_groups[2:]} == {old.cfg.lr}


def test_lit_views_are_shaded_with_interpolated_vertex_normals(views):
    class Prior:
        def __call__(self, inp):
            return {}

    stage = _detail(views, Prior())
    mesh = stage.mesh()
    cams = views.cameras[2:3].resized(96, 96)  # several pixels a face
    smooth = stage.render_mesh(mesh, cams, None, with_normals=True)
    stage.cfg.shading_normals = "face"
    flat = stage.render_mesh(mesh, cams, None, with_normals=True)
    tri = flat.tri_id.reshape(-1)
    covered = tri >= 0
    tri = tri[covered]

    def spread(normals):  # per face, the range of each component over its pixels
        n = normals.reshape(-1, 3)[covered].detach()
        idx = tri[:, None].expand(-1, 3)
        hi = torch.full((mesh.n_faces, 3), -2.0).scatter_reduce(0, idx, n, "amax")
        lo = torch.full((mesh.n_faces, 3), 2.0).scatter_reduce(0, idx, n, "amin")
        seen = torch.bincount(tri, minlength=mesh.n_faces) > 1
        return (hi - lo)[seen].max()

    assert covered.sum() > 500
    assert spread(flat.normals) < 1e-5, "a face's pixels share one flat normal"
    assert spread(smooth.normals) > 1e-3, "interpolated normals vary across a face"
    cos = (flat.normals.reshape(-1, 3)[covered] * smooth.normals.reshape(-1, 3)[covered]).sum(-1)
    assert cos.min() > 0.5, "the two agree roughly: both face outward"


# ------------------------------------------------------------------ presets and --set
def test_defaults_name_their_references_and_the_old_values_stay_reachable():
    d, o = DetailStageConfig(), OutlineStageConfig()
    assert (d.normal_consistency_form, d.normal_consistency_weight) == ("vertex", 1000.0)
    assert (d.laplacian_form, d.laplacian_weight) == ("norm", 20.0)
    assert (d.shading_normals, d.novel_background, d.texture_encoding_lr_scale) == ("vertex", "random", 10.0)
    assert o.progressive_band and o.normal_eps_cells == 1.0 and not o.progressive_view
    assert not outline_preset("draft").progressive_band and outline_preset("fast").progressive_band
    draft = detail_preset("draft")
    assert (draft.normal_consistency_form, draft.laplacian_form, draft.novel_background) == ("face", "squared", "white")
    p = pipeline_preset("paper")
    assert (p.inversion.steps, p.inversion.batch_size, p.inversion.fresh_augmentations) == (1000, 8, True)
    assert (p.export.min_part_fraction, p.export.part_relative_to) == (0.05, "largest")
    old = apply_overrides(PipelineConfig(), [
        "detail.normal_consistency_form=face", "detail.laplacian_form=squared", "detail.laplacian_weight=1000",
        "detail.shading_normals=face", "detail.novel_background=white", "detail.texture_encoding_lr_scale=1",
        "outline.progressive_band=false", "outline.normal_eps_cells=null", "inversion.fresh_augmentations=false",
        "export.min_part_fraction=0.05", "export.part_relative_to=total",
    ])
    assert (old.detail.normal_consistency_form, old.detail.laplacian_form, old.detail.laplacian_weight) == (
        "face", "squared", 1000.0)
    assert old.outline.normal_eps_cells is None and not old.outline.progressive_band
    assert (old.export.min_part_fraction, old.export.part_relative_to) == (0.05, "total")
