"""Extra views (`generate --view IMG@AZ[,POLAR]`): parsing, cameras, framing, the stages' use, end to end.

The photos are renders of the procedural object (mpod123/bench/synthetic.py) from cameras built (tests/inputs.py) with
look_at from explicit eye points, not with the code under test: the object faces +Z, so a photo of
its left side is taken from +X (its blue arm), from behind from -Z, of its right side from -X.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from mpod123.camera import orbit_position
from mpod123.config import pipeline_preset
from mpod123.imaging.metrics import silhouette_iou
from mpod123.pipeline.preprocess import preprocess
from mpod123.stages.base import reference_view_index
from mpod123.bench.synthetic import render_object
from mpod123.pipeline.extra_views import (
    MAX_VIEWS,
    ViewSpec,
    ViewSpecError,
    parse_view_spec,
    parse_view_specs,
    reference_views,
    view_camera,
)
from tests.inputs import E, EYES, camera_at, png_of
from tests.inputs import view_photo as photo

@pytest.fixture(scope="module")
def photos():
    return {side: photo(side) for side in EYES}


def _mask(pre) -> torch.Tensor:
    return torch.from_numpy(pre.rgba[..., 3] >= 0.5)


# ------------------------------------------------------------------ parsing
def test_view_specs_parse_and_bad_ones_say_what_to_give(tmp_path):
    at = tmp_path / "back@2x.png"  # an '@' in the file name is fine: the last one splits
    at.write_bytes(photo("back", 32))
    assert parse_view_spec(f"{at}@180") == ViewSpec(str(at), 180.0, None)
    img = tmp_path / "back.png"
    img.write_bytes(at.read_bytes())
    assert parse_view_spec(f"{img}@90,80") == ViewSpec(str(img), 90.0, 80.0)
    assert parse_view_spec(f"{img}@-90.5, 100") == ViewSpec(str(img), -90.5, 100.0)
    cases = {
        f"{img}": "IMAGE@AZIMUTH",
        f"{img}@": "AZIMUTH",
        f"{img}@abc": "not a number",
        f"{img}@nan": "finite",
        f"{img}@inf": "finite",
        f"{img}@400": "out of range",
        f"{img}@90,0": "out of range",
        f"{img}@90,180": "out of range",
        f"{img}@90,80,3": "AZIMUTH,POLAR",
        "@90": "missing",
        f"{tmp_path / 'nope.png'}@90": "no image file",
    }
    for text, needle in cases.items():
        with pytest.raises(ViewSpecError, match=needle):
            parse_view_spec(text)
    with pytest.raises(ViewSpecError, match=f"at most {MAX_VIEWS}"):
        parse_view_specs([f"{img}@{10 * i}" for i in range(MAX_VIEWS + 1)])


def test_cli_refuses_a_bad_view_with_exit_2_and_no_output(tmp_path, capsys):
    from mpod123.cli.main import main

    main_png = tmp_path / "main.png"
    main_png.write_bytes(photo("front", 32))
    out = tmp_path / "out.glb"
    code = main(["generate", str(main_png), "-o", str(out), "--tiny", "--view", f"{main_png}@90,200"])
    assert code == 2 and not out.exists()
    assert "polar 200 is out of range" in capsys.readouterr().err


# ------------------------------------------------------------------ cameras
def test_each_view_camera_sits_where_its_azimuth_says(photos):
    """A render of the procedural object from the camera a view gets matches that view's silhouette;
    the same render from a wrong azimuth (the mirror side, a quarter turn) does not."""
    cfg = pipeline_preset("draft")
    main = preprocess(photos["front"], cfg.preprocess)
    cases = {"left": (90.0, None), "back": (180.0, None), "right": (270.0, None), "left_above": (90.0, 80.0)}
    for side, (az, polar) in cases.items():
        [(_, framed, ref)] = reference_views([ViewSpec(photos[side], az, polar)], main, cfg)
        # the camera is the reference camera's distance and fov, at the view's angles
        assert torch.allclose(ref.camera.position[0], torch.tensor(EYES[side]), atol=1e-4), side
        scores = {}
        for test_az in (az, -az, az + 90.0):
            cam = view_camera(ViewSpec(b"", test_az, polar), cfg, 96, 96)
            render = png_of(render_object(cam)[0].numpy())
            [(_, seen, _)] = reference_views([ViewSpec(render, test_az, polar)], main, cfg)  # framed the same way
            scores[test_az] = silhouette_iou(_mask(seen), _mask(framed))
        assert scores[az] >= 0.97, (side, scores)
        assert max(scores[-az], scores[az + 90.0]) <= 0.93 or side == "back", (side, scores)
        assert scores[az + 90.0] <= 0.75, (side, scores)


def test_shared_framing_keeps_the_object_scale_and_independent_does_not(photos):
    """Seen level from the front and from the side, the object is equally tall: the shared framing keeps
    that, framing the side view on its own (its longer side is its height, the front's its width) does not."""
    cfg = pipeline_preset("draft")
    main = preprocess(photos["front"], cfg.preprocess)

    def height(mask: torch.Tensor) -> int:
        rows = mask.any(dim=1).nonzero()
        return int(rows.max() - rows.min() + 1)

    [(_, shared, _)] = reference_views([ViewSpec(photos["left"], 90.0)], main, cfg)
    cfg.preprocess.view_framing = "independent"
    [(_, alone, _)] = reference_views([ViewSpec(photos["left"], 90.0)], main, cfg)
    h_main = height(torch.from_numpy(main.mask))
    assert abs(height(_mask(shared)) - h_main) <= 2, (height(_mask(shared)), h_main)
    assert height(_mask(alone)) - h_main >= 6, (height(_mask(alone)), h_main)
    # centred on its own box, as the main photo is
    cols = _mask(shared).any(dim=0).nonzero()
    assert abs((int(cols.min()) + int(cols.max()) + 1) / 2 - cfg.preprocess.size / 2) <= 1.0


def test_a_view_taken_much_closer_is_refused_at_the_shared_scale(photos):
    cfg = pipeline_preset("draft")
    main = preprocess(photos["front"], cfg.preprocess)
    close = png_of(render_object(camera_at((1.25, 0.0, 0.0), 96))[0].numpy())
    with pytest.raises(ViewSpecError, match="view_framing=independent"):
        reference_views([ViewSpec(close, 90.0)], main, cfg)
    cfg.preprocess.view_framing = "independent"
    assert len(reference_views([ViewSpec(close, 90.0)], main, cfg)) == 1


# ------------------------------------------------------------------ schedule
def test_reference_steps_show_every_view_in_turn_with_equal_shares():
    steps = [s for s in range(400) if math.floor((s + 1) * 0.25) > math.floor(s * 0.25)]
    shown = [reference_view_index(s, 0.25, 3) for s in steps]
    assert shown[:6] == [0, 1, 2, 0, 1, 2]
    assert [shown.count(k) for k in range(3)] in ([34, 33, 33],)
    assert all(reference_view_index(s, 0.25, 1) == 0 for s in steps)


def test_stage1_reference_steps_render_the_extra_views_cameras(photos):
    from mpod123.config import outline_preset
    from mpod123.guidance import MultiViewSupervision
    from mpod123.stages import OutlineStage, ReferenceView

    cfg = pipeline_preset("draft")
    main = preprocess(photos["front"], cfg.preprocess)
    views = reference_views([ViewSpec(photos["back"], 180.0), ViewSpec(photos["left"], 90.0, 80.0)], main, cfg)
    ref = ReferenceView.on_orbit(torch.from_numpy(main.rgba), cfg.outline.camera)
    scfg = outline_preset("draft")
    scfg.render.resolution, scfg.preview_every, scfg.checkpoint_every = 16, 0, 0
    stage = OutlineStage(scfg, ref, MultiViewSupervision(ref.rgba[None], ref.camera))
    stage.add_reference_views([v for _, _, v in views])
    seen = []
    for step in (3, 7, 11):  # the first three reference steps at 25%
        stage.step = step
        cams, target = stage.reference_for_step()
        seen.append((round(float(torch.rad2deg(cams.azimuth[0])) % 360), round(float(torch.rad2deg(cams.polar[0])))))
        assert target.shape[1:3] == (16, 16) and cams.height == 16
    assert seen == [(0, 90), (180, 90), (90, 80)]
    # each target is that view's own image (its alpha), not the main photo's
    stage.step = 7
    _, back_target = stage.reference_for_step()
    assert not torch.equal(back_target, stage.reference_target)


class RecordingGuidance:
    """A guidance that scores nothing and keeps what it was given (the cameras and MRCA's masks)."""

    def __init__(self):
        self.inputs = []

    def __call__(self, inp):
        self.inputs.append(inp)
        return {"recorded": inp.rgb.sum() * 0.0}


def test_stage2_extra_view_cameras_join_lnvm_and_mrca_with_their_stage1_masks(photos):
    from mpod123.config import detail_preset, outline_preset
    from mpod123.guidance import MultiViewSupervision
    from mpod123.stages import DetailStage, OutlineStage, ReferenceView

    cfg = pipeline_preset("draft")
    main = preprocess(photos["front"], cfg.preprocess)
    extras = [v for _, _, v in reference_views([ViewSpec(photos["back"], 180.0), ViewSpec(photos["left"], 90.0)], main, cfg)]
    ref = ReferenceView.on_orbit(torch.from_numpy(main.rgba), cfg.outline.camera)
    ocfg = outline_preset("draft")
    ocfg.render.resolution, ocfg.preview_every, ocfg.checkpoint_every = 16, 0, 0
    ocfg.orientation_weight = ocfg.normal_smoothness_weight = 0.0  # a few steps of a fit: not what is tested
    outline = OutlineStage(ocfg, ref, MultiViewSupervision(ref.rgba[None], ref.camera))
    outline.add_reference_views(extras)
    ocfg.steps = 4
    outline.run()
    dcfg = detail_preset("draft")
    dcfg.resolution, dcfg.nvm_mask_resolution, dcfg.preview_every, dcfg.checkpoint_every = 24, 24, 0, 0
    dcfg.dmtet.resolution, dcfg.reference_view_prob, dcfg.extra_view_novel_share = 12, 0.0, 1.0
    dcfg.dmtet.init_threshold, dcfg.dmtet.fit_to_density = 1.0, False  # no calibration: not what is tested
    guidance = RecordingGuidance()
    stage = DetailStage(dcfg, ref, guidance, outline.field, outline.opacity)
    stage.add_reference_views(extras)
    for _ in range(4):
        stage.train_step()
    extra_positions = [cam.position[0] for cam, _ in stage.extra_references]
    for inp in guidance.inputs:
        pos = inp.cameras.position[0]
        j = next(i for i, p in enumerate(extra_positions) if torch.allclose(p, pos, atol=1e-5))
        cam = stage.extra_references[j][0].resized(24, 24)
        expected = (outline.opacity(cam) >= 0.5).float()[..., None]
        assert torch.equal(inp.masks, expected), "MRCA's mask is the stage-1 mask of that camera"
    keys = {k[0] for k in stage.nvm_cache}
    assert keys and keys <= {("extra_view", 0), ("extra_view", 1)}, "their stage-1 masks are rendered once, by view"
    # with the share at 0 no extra camera is used
    dcfg.extra_view_novel_share = 0.0
    guidance0 = RecordingGuidance()
    stage0 = DetailStage(dcfg, ref, guidance0, outline.field, outline.opacity)
    stage0.add_reference_views(extras)
    stage0.train_step()
    assert not any(torch.allclose(guidance0.inputs[0].cameras.position[0], p, atol=1e-5) for p in extra_positions)


def test_textual_inversion_pool_holds_every_view(tmp_path, photos):
    from mpod123.config import TextualInversionConfig
    from mpod123.guidance.stable_diffusion import load_stable_diffusion
    from mpod123.guidance.textual_inversion import TextualInversion
    from mpod123.runtime.tiny_models import ensure_tiny_models
    from mpod123.pipeline.extra_views import encode_view_pool

    made = ensure_tiny_models(tmp_path / "tiny")
    models = load_stable_diffusion(str(made["sd"]), "cpu", "float32")
    cfg = pipeline_preset("draft")
    main = preprocess(photos["front"], cfg.preprocess)
    [(_, _, back)] = reference_views([ViewSpec(photos["back"], 180.0)], main, cfg)
    front = torch.from_numpy(main.rgba)
    ti = TextualInversion(TextualInversionConfig(steps=1, batch_size=1, augmentations=5), models)
    single = ti.encode_pool(front).clone()
    assert torch.allclose(encode_view_pool(ti, [front]), single, atol=1e-5), "one view: the single-photo pool"
    pool = encode_view_pool(ti, [front, back.rgba]).clone()
    assert pool.shape == single.shape  # the same budget, split 3 + 2
    ti.cfg.augmentations = 3
    assert torch.allclose(pool[:3], encode_view_pool(ti, [front]), atol=1e-5), "the main view's share"
    ti.cfg.augmentations = 2
    assert not torch.allclose(pool[3:], encode_view_pool(ti, [front]), atol=1e-3), "the rest comes from the back view"
    pool = encode_view_pool(ti, [front, back.rgba])
    ti.train(front)
    assert ti.latent_pool is pool, "train() uses the pool of every view"



@pytest.mark.parametrize("force_upcast", [True, False])
def test_the_view_pool_is_encoded_by_the_float32_vae_when_its_config_sets_force_upcast(tmp_path, force_upcast):
    """fp16 models: every view of the pool goes through the same VAE as the single-photo pool (issue 29, bug 4)."""
    from mpod123.config import TextualInversionConfig
    from mpod123.guidance.stable_diffusion import load_stable_diffusion
    from mpod123.guidance.textual_inversion import TextualInversion
    from mpod123.runtime.tiny_models import ensure_tiny_models
    from mpod123.pipeline.extra_views import encode_view_pool

    made = ensure_tiny_models(tmp_path / "tiny")
    models = load_stable_diffusion(str(made["sd"]), "cpu", "float16")
    models.vae.register_to_config(force_upcast=force_upcast)
    g = torch.Generator().manual_seed(0)
    front, back = torch.rand(48, 48, 4, generator=g), torch.rand(48, 48, 4, generator=g)
    ti = TextualInversion(TextualInversionConfig(steps=1, batch_size=1, augmentations=4), models)
    seen = []
    hook = models.vae.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    single = ti.encode_pool(front).clone()
    tol = 1e-6 if force_upcast else 1e-3  # fp16 CPU convolutions are not bit-reproducible call to call
    assert torch.allclose(encode_view_pool(ti, [front]), single, atol=tol), "one view: the single-photo pool"
    hook.remove()
    vae, dtype = ti.encoding_vae()
    vae.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    encode_view_pool(ti, [front, back])
    if force_upcast:
        assert dtype == torch.float32 and vae is not models.vae
        assert seen[-1] == torch.float32 and torch.float16 not in seen, "no view is encoded by the fp16 VAE"
    else:
        assert dtype == torch.float16 and set(seen) == {torch.float16}


# ------------------------------------------------------------------ end to end
def test_generate_with_two_extra_views_end_to_end(tiny_models_home, photos, tmp_path):
    from mpod123.cli.main import main
    from mpod123.export.gltf import validate_glb

    paths = {}
    for side in ("front", "back", "left_above"):
        paths[side] = tmp_path / f"{side}.png"
        paths[side].write_bytes(photos[side])
    out = tmp_path / "out" / "object.glb"
    small = ["outline.steps=8", "detail.steps=8", "inversion.steps=1", "outline.occupancy.warmup_steps=2",
             "outline.preview_every=4", "detail.preview_every=4", "export.uv_backend=torch", "export.texture_size=64",
             "detail.extra_view_novel_share=0.5", "outline.render.resolution=16", "detail.resolution=32",
             "detail.nvm_mask_resolution=32", "detail.dmtet.resolution=16", "export.target_faces=500",
             "outline.orientation_weight=0", "outline.normal_smoothness_weight=0"]
    code = main(["generate", str(paths["front"]), "-o", str(out), "--preset", "draft", "--tiny", "--device", "cpu",
                 "--view", f"{paths['back']}@180", "--view", f"{paths['left_above']}@90,80",
                 *[a for s in small for a in ("--set", s)]])
    assert code == 0
    mesh = validate_glb(out.read_bytes())
    assert len(mesh.texture_png) > 100
    work = out.with_name("object.work")
    record = json.loads((work / "run.json").read_text())
    assert record["status"] == "done"
    views = record["views"]
    assert [(v["azimuth_deg"], v["polar_deg"]) for v in views] == [(180.0, None), (90.0, 80.0)]
    assert [(round(v["camera_azimuth_deg"]) % 360, round(v["camera_polar_deg"])) for v in views] == [(180, 90), (90, 80)]
    for i, side in ((1, "back"), (2, "left_above")):
        framed = np.asarray(Image.open(work / f"view_{i}.png"))
        assert framed.shape == (128, 128, 4) and (framed[..., 3] > 127).mean() > 0.05, side


BOX_CENTRE = (0.085, 0.035, -0.02)
"""Centre of the procedural object's bounding box (its primitives' extents): the views are each centred
on their own object box, so this point becomes the reconstruction's origin."""


@pytest.mark.slow
def test_four_views_with_no_prior_reconstruct_the_object(tiny_models_home, tmp_path):
    """The prior weights at zero (Zero123 SDS in stage 1, SD SDS in stage 2): only the four reference views,
    through generate's own code path, shape the object; scored on held-out views it never saw."""
    from mpod123.cli.main import main
    from mpod123.export import read_mesh
    from mpod123.rendering import MeshRenderer

    size = 96
    paths = []
    for az in (0, 90, 180, 270):  # photos from the object's front, left, back and right
        eye = orbit_position(torch.tensor(math.radians(90.0)), torch.tensor(math.radians(az)), torch.tensor(E))
        paths.append(tmp_path / f"az{az}.png")
        paths[-1].write_bytes(png_of(render_object(camera_at(tuple(eye.tolist()), size))[0].numpy()))
    out = tmp_path / "four.glb"
    sets = ["zero123.weight=0", "sd.weight=0", "outline.reference_view_prob=1.0", "outline.steps=80",
            "outline.orientation_weight=0", "outline.normal_smoothness_weight=0", "detail.steps=10", "export.target_faces=2000",
            "detail.reference_view_prob=0.5", "inversion.steps=1", "export.uv_backend=torch", "export.texture_size=64",
            "outline.preview_every=0", "detail.preview_every=0"]
    code = main(["generate", str(paths[0]), "-o", str(out), "--preset", "draft", "--tiny", "--device", "cpu",
                 *[a for az, p in zip((90, 180, 270), paths[1:]) for a in ("--view", f"{p}@{az}")],
                 *[a for s in sets for a in ("--set", s)]])
    assert code == 0
    record = json.loads((tmp_path / "four.work" / "run.json").read_text())
    assert record["config"]["zero123"]["weight"] == 0 and record["config"]["sd"]["weight"] == 0
    # the framing's zoom: the main photo's object box (longer side) is scaled to 60% of the frame
    cfg = pipeline_preset("draft")
    left, top, right, bottom = preprocess(paths[0], cfg.preprocess).bbox
    zoom = cfg.preprocess.size * (1 - 2 * cfg.preprocess.border_ratio) / max(right - left, bottom - top) * size / cfg.preprocess.size
    mesh = read_mesh(out)
    renderer = MeshRenderer("torch", "cpu")
    held_out = ((90, 45), (90, 135), (70, 225), (110, 315), (60, 0), (75, 160))
    scores = []
    for polar, az in held_out:
        direction = orbit_position(torch.tensor(math.radians(polar)), torch.tensor(math.radians(az)), torch.tensor(1.0))
        eye = torch.tensor(BOX_CENTRE) + direction * E / zoom
        truth = render_object(camera_at(tuple(eye.tolist()), 64, BOX_CENTRE))[0][..., 3] >= 0.5
        ours = renderer.render(mesh, camera_at(tuple((direction * E).tolist()), 64)).mask[0]
        scores.append(silhouette_iou(ours.cpu(), truth))
    assert np.mean(scores) >= 0.8 and min(scores) >= 0.7, scores
    print(f"four views, no prior: held-out silhouette IoU {np.mean(scores):.3f} (min {min(scores):.3f})")


def test_resuming_with_other_extra_views_is_refused_and_the_folder_is_kept(photos, tmp_path):
    from mpod123.config import to_dict
    from mpod123.pipeline.runner import RunError, Runner
    from mpod123.pipeline.extra_views import views_fingerprint

    cfg = pipeline_preset("draft")
    work = tmp_path / "work"
    work.mkdir()
    (work / "outline.ckpt").write_bytes(b"a finished stage 1")
    back = [ViewSpec(photos["back"], 180.0)]
    (work / "run.json").write_text(json.dumps({"config": to_dict(cfg), "views_fingerprint": views_fingerprint(back)}))
    for other in ([], [ViewSpec(photos["back"], 170.0)], [ViewSpec(photos["left"], 180.0)]):
        with pytest.raises(RunError, match="other extra views"):
            Runner(cfg, work, "cpu", resume=True, views=other).run(photos["front"])
    assert (work / "outline.ckpt").read_bytes() == b"a finished stage 1"
    assert views_fingerprint([]) is None and views_fingerprint(back) == views_fingerprint(list(back))
