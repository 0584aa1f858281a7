"""Stage 1: schedule, events, cancel, checkpoints (exact resume), masks, and a real fit."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from mpod123.camera import orbit_cameras
from mpod123.guidance import MultiViewSupervision
from mpod123.imaging.metrics import mask_from_alpha, silhouette_iou
from mpod123.runtime.progress import Cancelled, CancelToken, Preview, Progress, StageDone
from mpod123.bench.reconstruct import reconstruct_outline
from mpod123.stages import CheckpointError, OutlineStage, ReferenceView, is_reference_step
from mpod123.bench.synthetic import turntable_dataset


@pytest.fixture(scope="module")
def views():
    return turntable_dataset(12, 24)


def _stage(cfg, views, **kw):
    ref = ReferenceView(views.images[0], views.cameras[0])
    return OutlineStage(cfg, ref, MultiViewSupervision(views.images, views.cameras), **kw)


def test_reference_view_schedule_is_exactly_a_quarter():
    flags = [is_reference_step(s, 0.25) for s in range(1000)]
    assert sum(flags) == 250
    assert all(sum(flags[i : i + 4]) == 1 for i in range(0, 1000, 4))
    assert sum(is_reference_step(s, 0.1) for s in range(1000)) == 100


def test_reference_view_on_orbit_uses_the_configured_pose(tiny_cfg):
    ref = ReferenceView.on_orbit(torch.zeros(16, 16, 4), tiny_cfg)
    torch.testing.assert_close(ref.camera.position[0], torch.tensor([0.0, 0.0, 2.5]), atol=1e-6, rtol=0)


def test_events_previews_and_stage_done(tiny_cfg, views):
    tiny_cfg.steps, tiny_cfg.preview_every = 6, 4
    events = []
    done = _stage(tiny_cfg, views, callback=events.append).run()
    progress = [e for e in events if isinstance(e, Progress)]
    assert [p.step for p in progress] == list(range(1, 7))
    assert all(p.total == 6 and p.eta_s is not None and p.losses for p in progress)
    assert {"ref_rgb", "ref_mask"} <= set().union(*(p.losses for p in progress))
    assert {"mv_rgb", "mv_mask"} <= set().union(*(p.losses for p in progress))
    previews = [e for e in events if isinstance(e, Preview)]
    assert [p.step for p in previews] == [4, 6]
    img = Image.open(io.BytesIO(previews[0].png))
    assert img.size == (previews[0].width, previews[0].height)
    res = tiny_cfg.preview_resolution
    assert img.size == (4 * res + 3 * 2, 2 * res + 2), "4 views side by side; colour over normals"
    assert isinstance(events[-1], StageDone) and events[-1] == done and done.steps == 6


def test_resume_from_checkpoint_is_exact(tiny_cfg, views, tmp_path):
    tiny_cfg.steps = 10
    straight = _stage(tiny_cfg, views)
    straight.run()

    first = _stage(tiny_cfg, views)
    first.run(checkpoint_path=tmp_path / "outline.pt", steps=4)
    resumed = _stage(tiny_cfg, views)
    resumed.load_checkpoint(tmp_path / "outline.pt")
    assert resumed.step == 4
    resumed.run()
    for (name, a), (_, b) in zip(straight.field.state_dict().items(), resumed.field.state_dict().items()):
        assert torch.equal(a, b), f"{name} differs after resume"
    assert torch.equal(straight.grid.binary, resumed.grid.binary)


def test_cancel_stops_within_a_step_and_keeps_a_checkpoint(tiny_cfg, views, tmp_path):
    tiny_cfg.steps = 50
    token = CancelToken()

    def cancel_at_three(event):
        if isinstance(event, Progress) and event.step == 3:
            token.cancel("user")

    stage = _stage(tiny_cfg, views, callback=cancel_at_three, cancel=token)
    with pytest.raises(Cancelled):
        stage.run(checkpoint_path=tmp_path / "outline.pt")
    assert stage.step == 3
    again = _stage(tiny_cfg, views)
    again.load_checkpoint(tmp_path / "outline.pt")
    assert again.step == 3
    assert not (tmp_path / "outline.pt.tmp").exists()


def test_checkpoint_errors_are_clear(tiny_cfg, views, tmp_path):
    stage = _stage(tiny_cfg, views)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        stage.load_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        stage.load_checkpoint(tmp_path / "junk.pt")
    stage.save_checkpoint(tmp_path / "ok.pt")
    tiny_cfg.nerf.hidden_dim = 16
    other = _stage(tiny_cfg, views)
    with pytest.raises(CheckpointError, match="differ"):
        other.load_checkpoint(tmp_path / "ok.pt")


def test_masks_are_thresholded_opacity(tiny_cfg, views):
    stage = _stage(tiny_cfg, views)
    cams = orbit_cameras([90.0, 70.0], [0.0, 200.0], 2.5, 40.0, 20)
    out = stage.render(cams)
    masks = stage.masks(cams)
    assert masks.dtype == torch.bool and masks.shape == (2, 20, 20)
    assert torch.equal(masks, out.opacity[..., 0] >= 0.5)
    assert masks.any() and not masks.all(), "the initial blob covers part of the image"


def test_fit_from_views_reaches_silhouette_iou_090_on_held_out_views(tiny_cfg):
    """Builds a textured object, renders 24 views, fits stage 1 on 20, scores the other 4."""
    dataset = turntable_dataset(24, 64)
    tiny_cfg.steps = 300
    tiny_cfg.render.resolution = 32
    report = reconstruct_outline(dataset, holdout=4, cfg=tiny_cfg)
    m = report.metrics
    assert m["held_out_views"] == 4 and m["train_views"] == 20
    assert m["silhouette_iou"] >= 0.90, m["outline"]["per_view"]
    assert min(v["silhouette_iou"] for v in m["outline"]["per_view"]) >= 0.85
    assert m["masked_psnr"] >= 14.0
    # The untrained stage is far from it: the fit, not the blob, earns the score.
    untrained = _stage(tiny_cfg, dataset)
    _, held = dataset.split_holdout(4)
    iou0 = silhouette_iou(untrained.masks(held.cameras), mask_from_alpha(held.images[..., 3]))
    assert iou0 < 0.75, iou0


def test_one_seed_gives_one_fit_on_two_threads():
    """With two threads torch's CPU ``index_add`` (the hash grid's gradient) sums in a varying order, and
    two fits of one seed drifted apart (stage 2's tests then failed now and then): with
    ``stage.deterministic = False`` this test fails. A stage runs with the deterministic algorithms on the
    CPU unless told otherwise."""
    from mpod123.config import outline_preset

    views = turntable_dataset(16, 32)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fits = []
        for _ in range(2):
            cfg = outline_preset("draft")
            cfg.steps, cfg.render.resolution, cfg.preview_every, cfg.checkpoint_every = 60, 24, 0, 0
            stage = OutlineStage(cfg, ReferenceView(views.images[0], views.cameras[0]),
                                 MultiViewSupervision(views.images, views.cameras))
            stage.run()
            fits.append(torch.cat([p.detach().flatten() for p in stage.field.parameters()]))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(fits[0], fits[1]), "two fits of one seed differ"
