"""Quality evaluation: metrics on hand-checkable cases and tiny random networks, the textured
turntable render, and ``mpod123 eval`` (including missing weights)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mpod123.camera import orbit_cameras
from mpod123.evaluation.config import EvalConfig, WeightsUnavailable
from mpod123.evaluation.contextual import contextual_score, contextual_similarity
from mpod123.evaluation.textured_mesh import (
    TexturedMesh,
    load_glb,
    render_textured,
    sample_texture,
)
from mpod123.evaluation.turntable import render_turntable, turntable_cameras
from mpod123.evaluation.vgg import VGG19Features, load_vgg19
from mpod123.imaging.metrics import psnr, ssim
from mpod123.bench.synthetic import object_albedo, render_object
from tests.eval_assets import TINY_VGG_WIDTHS, save_tiny_clip, save_tiny_vgg, write_object_glb, write_reference_png

@pytest.fixture(scope="module")
def object_glb(tmp_path_factory):
    return write_object_glb(tmp_path_factory.mktemp("glb") / "object.glb")


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def tiny_vgg_file(tmp_path_factory):
    return save_tiny_vgg(tmp_path_factory.mktemp("tiny-vgg") / "vgg19.pth")


def on_white(rgba: torch.Tensor) -> torch.Tensor:
    return rgba[..., :3] * rgba[..., 3:] + 1 - rgba[..., 3:]


# ----------------------------------------------------------------------------- PSNR and SSIM
def test_psnr_of_a_constant_error_is_hand_computed():
    pred = torch.zeros(8, 8, 3)
    target = torch.full((8, 8, 3), 0.1)
    assert psnr(pred, target) == pytest.approx(20.0, abs=1e-4)  # mse 0.01
    target[:4] = 0.0  # half the pixels exact: mse 0.005 over all, 0.01 inside the mask
    assert psnr(pred, target) == pytest.approx(10 * math.log10(1 / 0.005), abs=1e-4)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[4:] = True
    assert psnr(pred, target, mask) == pytest.approx(20.0, abs=1e-4)


def test_ssim_of_identical_images_is_one_and_of_constants_is_the_luminance_term():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 24, 3, generator=g)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    a, b = 0.2, 0.6
    c1 = 0.01**2  # variances and covariance are 0: SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    const = {"size": (16, 16, 3), "dtype": torch.float64}
    assert ssim(torch.full(fill_value=a, **const), torch.full(fill_value=b, **const)) == pytest.approx(expected, abs=1e-12)


def test_ssim_matches_a_direct_window_by_window_computation():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(13, 14, 2, generator=g, dtype=torch.float64)
    y = (0.6 * x + 0.4 * torch.rand(13, 14, 2, generator=g, dtype=torch.float64)).clamp(0, 1)
    k = np.arange(11) - 5.0
    w1 = np.exp(-(k**2) / (2 * 1.5**2))
    w = np.outer(w1, w1)
    w /= w.sum()
    c1, c2 = 0.01**2, 0.03**2
    xs, ys = x.numpy(), y.numpy()
    vals = []
    for ch in range(2):
        for i in range(13 - 10):
            for j in range(14 - 10):
                px, py = xs[i : i + 11, j : j + 11, ch], ys[i : i + 11, j : j + 11, ch]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cov = (w * (px - mx) * (py - my)).sum()
                vals.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    assert ssim(x, y) == pytest.approx(float(np.mean(vals)), abs=1e-10)
    assert ssim(x, y) < 0.99


# ----------------------------------------------------------------------------- CX
def test_contextual_similarity_on_hand_made_features():
    y = torch.eye(4)  # four distinct features
    assert contextual_similarity(y, y) == pytest.approx(1.0, abs=1e-6)
    assert contextual_score(y[[1, 0, 3, 2]], y) == pytest.approx(0.0, abs=1e-6)  # order does not matter
    # Y = {e1, e2}; X finds only e1: half of Y's features are matched -> CX = 1/2
    y2, x2 = torch.eye(2), torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert contextual_similarity(x2, y2) == pytest.approx(0.5, abs=1e-6)
    assert contextual_score(x2, y2) == pytest.approx(math.log(2.0), abs=1e-5)


def _shuffle_patches(image: torch.Tensor, patch: int, seed: int) -> torch.Tensor:
    n = image.shape[0] // patch
    blocks = image.reshape(n, patch, n, patch, 3).permute(0, 2, 1, 3, 4).reshape(n * n, patch, patch, 3)
    perm = torch.randperm(n * n, generator=torch.Generator().manual_seed(seed))
    while torch.equal(perm, torch.arange(n * n)):
        perm = torch.randperm(n * n)
    return blocks[perm].reshape(n, n, patch, patch, 3).permute(0, 2, 1, 3, 4).reshape(n * patch, n * patch, 3)


def test_cx_of_an_image_with_itself_is_minimal_and_grows_when_patches_are_shuffled():
    torch.manual_seed(0)
    vgg = VGG19Features(TINY_VGG_WIDTHS).eval()
    image = on_white(render_object(orbit_cameras(90.0, 0.0, 2.5, 40.0, 96)))[0]
    with torch.no_grad():
        ref = vgg(image[None])[0]
        assert ref.shape == (32, 6, 6)  # relu5_4: stride 16
        self_score = contextual_score(ref, ref)
        shuffled = [
            contextual_score(vgg(_shuffle_patches(image, p, s)[None])[0], ref) for p in (48, 24, 12) for s in (0, 1)
        ]
        noise = contextual_score(vgg(torch.rand(1, 96, 96, 3, generator=torch.Generator().manual_seed(3)))[0], ref)
    assert self_score == pytest.approx(0.0, abs=1e-4)
    assert min(shuffled) > self_score + 0.1, shuffled
    assert noise > self_score + 0.1


def test_vgg19_has_torchvisions_layer_names_and_loads_pth_and_safetensors(tmp_path):
    convs = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]  # torchvision vgg19 (config E)
    names = [f"features.{i}.{p}" for i in convs for p in ("weight", "bias")]
    assert list(VGG19Features().state_dict()) == names
    assert VGG19Features().features[35].__class__.__name__ == "ReLU"
    torch.manual_seed(0)
    original = VGG19Features(TINY_VGG_WIDTHS).eval()
    x = torch.rand(1, 32, 32, 3)
    for name in ("vgg.pth", "vgg.safetensors"):
        loaded = load_vgg19(save_tiny_vgg(tmp_path / name))
        assert loaded.widths == TINY_VGG_WIDTHS
        assert torch.allclose(loaded(x), original(x))
    with pytest.raises(WeightsUnavailable, match="--vgg"):
        load_vgg19(tmp_path / "missing.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailable, match="not a VGG19 state dict"):
        load_vgg19(tmp_path / "bad.pth")


# ----------------------------------------------------------------------------- CLIP and MVC
def test_clip_similarity_of_identical_views_is_one_and_mvc_of_a_constant_turntable_is_one(tiny_clip_dir):
    from mpod123.evaluation.clip_score import (
        ClipEmbedder,
        clip_score,
        multiview_consistency,
    )

    clip = ClipEmbedder(str(tiny_clip_dir))
    assert clip.image_size == 32
    image = on_white(render_object(orbit_cameras(90.0, [0.0, 90.0], 2.5, 40.0, 48)))
    emb = clip.embed(torch.cat([image[:1], image[:1].expand(5, -1, -1, -1)]))
    score, per_view = clip_score(emb[1:], emb[0])
    assert score == pytest.approx(1.0, abs=1e-5) and len(per_view) == 5
    mvc, pairs = multiview_consistency(emb[1:])
    assert mvc == pytest.approx(1.0, abs=1e-5) and len(pairs) == 5
    # a different view is less similar, and MVC pairs wrap around (pair k = views k, k+1 mod N)
    other = clip.embed(image)
    assert clip_score(other[1:], other[0])[0] < 1.0 - 1e-4
    mvc2, pairs2 = multiview_consistency(torch.stack([other[0], other[0], other[1]]))
    assert pairs2[0] == pytest.approx(1.0, abs=1e-5) and pairs2[2] == pytest.approx(pairs2[1], abs=1e-6)
    assert mvc2 == pytest.approx((1.0 + 2 * pairs2[1]) / 3, abs=1e-6)


def test_clip_loads_a_vision_only_encoder_in_a_diffusers_folder(tmp_path, tiny_clip_dir):
    from transformers import CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    from mpod123.evaluation.clip_score import ClipEmbedder

    full = CLIPModel.from_pretrained(tiny_clip_dir)
    vcfg = CLIPVisionConfig(**{**full.config.vision_config.to_dict(), "projection_dim": 16})
    vision = CLIPVisionModelWithProjection(vcfg)
    vision.vision_model.load_state_dict(full.vision_model.state_dict())
    vision.visual_projection.load_state_dict(full.visual_projection.state_dict())
    vision.save_pretrained(tmp_path / "zero123" / "image_encoder")
    x = torch.rand(2, 40, 40, 3)
    a = ClipEmbedder(str(tmp_path / "zero123")).embed(x)
    b = ClipEmbedder(str(tiny_clip_dir)).embed(x)
    assert torch.allclose(a, b, atol=1e-5)


def test_missing_clip_weights_say_where_they_were_looked_for(tmp_path):
    from mpod123.evaluation.clip_score import ClipEmbedder

    with pytest.raises(WeightsUnavailable) as info:
        ClipEmbedder("mpod123-test/no-such-clip-model")
    text = str(info.value)
    assert "mpod123-test/no-such-clip-model" in text and "--clip" in text and "cache" in text


# ----------------------------------------------------------------------------- texture sampling and rendering
def test_texture_sampling_uses_gltfs_top_left_origin_and_texel_centres():
    tex = torch.tensor([[[0.0], [1.0]], [[2.0], [3.0]]])  # row 0 = top: 0 1 / row 1: 2 3
    uv = torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75], [0.5, 0.5], [0.5, 0.25], [0.0, 0.0], [1.0, 1.0]])
    got = sample_texture(tex, uv)[:, 0]
    assert got.tolist() == pytest.approx([0.0, 1.0, 2.0, 3.0, 1.5, 0.5, 0.0, 3.0])


def test_glb_round_trip_keeps_uvs_and_texture(tmp_path):
    from mpod123.export.gltf import encode_glb
    from mpod123.imaging.images import png_bytes

    g = torch.Generator().manual_seed(0)
    texture = torch.rand(8, 16, 3, generator=g)
    texture = torch.round(texture * 255) / 255  # exactly representable in the PNG
    rows, cols = torch.tensor([0, 3, 7]), torch.tensor([1, 9, 15])
    uvs = torch.stack([(cols + 0.5) / 16, (rows + 0.5) / 8], -1).numpy()  # the written texels' centres
    positions = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    glb = encode_glb(positions, np.array([[0, 1, 2]]), uvs, np.tile([0, 0, 1], (3, 1)), png_bytes(texture.numpy()))
    (tmp_path / "t.glb").write_bytes(glb)
    mesh = load_glb(tmp_path / "t.glb")
    assert mesh.textured and mesh.texture.shape == (8, 16, 3)
    assert torch.allclose(sample_texture(mesh.texture, mesh.uvs), texture[rows, cols], atol=1e-6)


def test_textured_glb_render_matches_the_ray_traced_object(object_glb):
    from mpod123.geometry.mesh import Mesh
    from mpod123.rendering.mesh_renderer import MeshRenderer

    mesh = load_glb(object_glb)
    cams = orbit_cameras(90.0, [0.0, 90.0, 180.0, 270.0], 2.5, 40.0, 48)
    out = render_textured(mesh, cams)
    truth = render_object(cams)
    inside = out.covered & (truth[..., 3] > 0.999)
    union = (out.covered | (truth[..., 3] >= 0.5)).sum()
    assert (out.covered & (truth[..., 3] >= 0.5)).sum() / union > 0.9
    err = (out.rgb - truth[..., :3]).abs().amax(-1)[inside]
    # the mesh's own surface albedo (no texture) shows how far the extracted geometry alone moves the patterns
    # (welded: the exporter's atlas splits every vertex at its UV seams, which are not silhouettes)
    exact = MeshRenderer("torch").render(Mesh(mesh.vertices, mesh.faces).welded()[0], cams, object_albedo, torch.ones(4, 3))
    geometry_err = (exact.rgb - truth[..., :3]).abs().amax(-1)[inside]
    assert err.median() < 0.02
    assert err.mean() < geometry_err.mean() + 0.02
    # against the same surface's albedo, the texture path is nearly exact
    assert ((out.rgb - exact.rgb).abs().amax(-1)[inside] < 0.1).float().mean() > 0.95
    # and a wrong UV convention (v up) would be far off
    flipped = TexturedMesh(mesh.vertices, mesh.faces, torch.stack([mesh.uvs[:, 0], 1 - mesh.uvs[:, 1]], -1), mesh.texture)
    assert (render_textured(flipped, cams).rgb - truth[..., :3]).abs().amax(-1)[inside].median() > 0.2
    # white where nothing covers the pixel
    assert torch.all(out.rgb[(out.opacity == 0)] == 1.0)


def _colour_pixels(rgb: torch.Tensor):
    red = (rgb[..., 0] > 0.7) & (rgb[..., 1] < 0.25) & (rgb[..., 2] < 0.25)
    blue = (rgb[..., 2] > 0.7) & (rgb[..., 0] < 0.3) & (rgb[..., 1] < 0.35)
    return red, blue


def _mean_column(mask: torch.Tensor) -> float:
    return float(torch.nonzero(mask)[:, 1].float().mean()) + 0.5


def test_turntable_view_zero_is_the_reference_camera_and_azimuth_increases_towards_plus_x(object_glb):
    cfg = EvalConfig(views=4, resolution=48)
    cams = turntable_cameras(cfg)
    ref = orbit_cameras(90.0, 0.0, 2.5, 40.0, 48)
    assert torch.allclose(cams.c2w[0], ref.c2w[0], atol=1e-6)
    assert torch.allclose(cams.c2w[0, :3, :3], torch.eye(3), atol=1e-6)  # camera axes = world axes
    assert torch.allclose(cams.position, torch.tensor([[0, 0, 2.5], [2.5, 0, 0], [0, 0, -2.5], [-2.5, 0, 0]]), atol=1e-5)
    table = render_turntable(load_glb(object_glb), cfg)
    assert table.azimuth_deg == [0.0, 90.0, 180.0, 270.0] and table.textured
    mid = 24.0
    red0, blue0 = _colour_pixels(table.rgb[0])
    red1, blue1 = _colour_pixels(table.rgb[1])
    red2, blue2 = _colour_pixels(table.rgb[2])
    red3, blue3 = _colour_pixels(table.rgb[3])
    # view 0 (on +Z): the red nose faces the camera, centred; the blue arm (+X) is on the right
    assert red0.sum() >= 4 and abs(_mean_column(red0) - mid) < 3 and _mean_column(blue0) > mid + 6
    # view 1 (on +X): the arm points at the camera (centre); the nose (+Z) is on the left
    assert blue1.sum() >= 4 and abs(_mean_column(blue1) - mid) < 4 and _mean_column(red1) < mid - 2
    # view 2 (on -Z): the head hides the nose; the arm is on the left
    assert red2.sum() == 0 and _mean_column(blue2) < mid - 6
    # view 3 (on -X): the body hides the arm; the nose is on the right
    assert blue3.sum() == 0 and _mean_column(red3) > mid + 2


# ----------------------------------------------------------------------------- mpod123 eval
def test_eval_cli_scores_the_object_with_tiny_models(tmp_path, object_glb, tiny_clip_dir, tiny_vgg_file, capsys):
    from mpod123.cli.main import main

    ref = write_reference_png(tmp_path / "front.png", 96)
    out = tmp_path / "eval"
    code = main([
        "eval", str(object_glb), "--reference", str(ref), "--out", str(out), "--views", "6", "--res", "96",
        "--clip", str(tiny_clip_dir), "--vgg", str(tiny_vgg_file), "--no-frame", "--device", "cpu",
    ])
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    v = m["metrics"]
    assert m["views"] == 6 and m["resolution"] == 96 and m["unavailable"] == {}
    assert m["backbones"]["clip"] == str(tiny_clip_dir) and "relu5_4" in m["backbones"]["vgg"]
    assert "OUR definition" in m["definitions"]["mvc"]
    assert len(m["per_view"]["clip"]) == 5 and len(m["per_view"]["cx"]) == 5 and len(m["per_view"]["mvc_pairs"]) == 6
    assert v["clip"] == pytest.approx(np.mean(m["per_view"]["clip"])) and v["cx"] == pytest.approx(np.mean(m["per_view"]["cx"]))
    assert -1.0 <= v["clip"] <= 1.0 and -1.0 <= v["mvc"] <= 1.0 and v["cx"] >= 0.0
    # the reference view of the exported object against its exact render
    assert v["iou"] > 0.9 and v["psnr"] > 15.0 and 0.5 < v["ssim"] <= 1.0
    # the reference view is the best-matching view for CLIP (the same camera as the input)
    assert m["per_view"]["clip_view0"] >= max(m["per_view"]["clip"]) - 1e-6
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.size == (7 * 96 + 6 * 2, 96)  # the input, then 6 views
    assert len(list((out / "views").glob("view_*.png"))) == 6
    assert "CLIP" in capsys.readouterr().out
    # a reference seen from the side matches the front view worse
    side = write_reference_png(tmp_path / "side.png", 96, azimuth=90.0)
    assert main([
        "eval", str(object_glb), "--reference", str(side), "--out", str(tmp_path / "e2"), "--views", "4",
        "--res", "96", "--clip", str(tiny_clip_dir), "--vgg", str(tiny_vgg_file), "--no-frame", "--no-view-pngs",
    ]) == 0
    v2 = json.loads((tmp_path / "e2" / "metrics.json").read_text())["metrics"]
    assert v2["iou"] < v["iou"] - 0.1 and v2["psnr"] < v["psnr"]
    assert not (tmp_path / "e2" / "views").exists()


def test_eval_without_weights_reports_them_unavailable_and_still_scores_the_proxies(
    tmp_path, object_glb, monkeypatch, capsys
):
    from mpod123.cli.main import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no VGG19 in the default place
    ref = write_reference_png(tmp_path / "front.png", 64)
    code = main([
        "eval", str(object_glb), "--reference", str(ref), "--out", str(tmp_path / "out"), "--views", "4",
        "--res", "64", "--clip", "mpod123-test/no-such-clip", "--no-frame",
    ])
    assert code == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["metrics"]["clip"] is None and m["metrics"]["mvc"] is None and m["metrics"]["cx"] is None
    assert set(m["unavailable"]) == {"clip", "mvc", "cx"}
    assert "mpod123-test/no-such-clip" in m["unavailable"]["clip"] and "--clip" in m["unavailable"]["clip"]
    assert "cache" in m["unavailable"]["clip"]
    assert "--vgg" in m["unavailable"]["cx"] and str(tmp_path / "torch-home") in m["unavailable"]["cx"]
    assert m["metrics"]["iou"] > 0.9 and m["metrics"]["psnr"] > 15 and m["metrics"]["ssim"] > 0.5
    assert m["backbones"]["clip"] == "mpod123-test/no-such-clip"
    err = capsys.readouterr().err
    assert "CLIP unavailable" in err and "CX unavailable" in err


def test_eval_bad_inputs_exit_2(tmp_path, object_glb, capsys):
    from mpod123.cli.main import main

    ref = write_reference_png(tmp_path / "front.png", 32)
    base = ["--reference", str(ref), "--out", str(tmp_path / "o"), "--res", "32", "--clip", "x/y", "--vgg", "none.pth"]
    assert main(["eval", str(tmp_path / "missing.glb"), *base]) == 2
    assert "no result file" in capsys.readouterr().err
    (tmp_path / "bad.glb").write_bytes(b"glTF but not really")
    assert main(["eval", str(tmp_path / "bad.glb"), *base]) == 2
    assert "not a usable GLB" in capsys.readouterr().err
    assert main(["eval", str(object_glb), *base, "--views", "1"]) == 2
    assert "--views" in capsys.readouterr().err
    assert main(["eval", str(object_glb), "--reference", str(tmp_path / "nope.png"), "--out", str(tmp_path / "o")]) == 2
    assert "no reference image" in capsys.readouterr().err


def test_eval_frames_the_reference_like_the_pipeline(tmp_path, object_glb):
    """A photo-sized input is framed (object centred, long side at 60%) at the render resolution."""
    from mpod123.evaluation.report import load_reference

    rgba = render_object(orbit_cameras(90.0, 0.0, 2.5, 40.0, 80, 60))[0].numpy()
    Image.fromarray((rgba * 255 + 0.5).astype(np.uint8), "RGBA").save(tmp_path / "wide.png")
    framed = load_reference(tmp_path / "wide.png", EvalConfig(resolution=50))
    assert framed.shape == (50, 50, 4)
    cols = np.nonzero((framed[..., 3] >= 0.5).any(0))[0]
    assert cols.max() + 1 - cols.min() == pytest.approx(30, abs=1)  # 60% of 50
    with pytest.raises(ValueError, match="square"):
        load_reference(tmp_path / "wide.png", EvalConfig(resolution=50, frame_reference=False))


def test_evaluation_commands_do_not_import_heavy_modules():
    code = (
        "import sys, json, argparse, mpod123.cli.evaluation as c, mpod123.evaluation.report, "
        "mpod123.evaluation.suite\n"
        "p = argparse.ArgumentParser(); c.register(p.add_subparsers())\n"
        "print(json.dumps([m for m in ('transformers', 'diffusers', 'torchvision') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


# ----------------------------------------------------------------------------- aligning another tool's mesh
def write_moved_glb(source, path, scale: float, shift) -> None:
    """``source`` (a GLB we wrote) with every position mapped to ``scale * p + shift``: another tool's frame."""
    from mpod123.export.gltf import encode_glb
    from mpod123.export.reader import read_mesh_file
    from mpod123.imaging.images import png_bytes

    asset = read_mesh_file(source)
    positions = asset.positions.astype(np.float64) * scale + np.asarray(shift)
    normals = np.tile(np.float32([0, 0, 1]), (len(positions), 1))
    glb = encode_glb(positions.astype(np.float32), asset.faces.astype(np.uint32), asset.uvs, normals,
                     png_bytes(asset.materials[0].texture))
    path.write_bytes(glb)


@pytest.fixture(scope="module")
def front_reference(tmp_path_factory, object_glb):
    """The object's front render (as a photo: framed by preprocessing), and the alignment of the unmoved mesh."""
    from mpod123.evaluation.report import EvalModels, evaluate

    ref = write_reference_png(tmp_path_factory.mktemp("front") / "front.png", 128)
    cfg = EvalConfig(views=2, resolution=96, device="cpu", save_views=False)
    return ref, evaluate(object_glb, ref, cfg, EvalModels()).metrics["alignment"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eval_aligns_a_mesh_in_another_frame_to_its_own_render(tmp_path, object_glb, front_reference, seed):
    """Issue 29: the object's mesh, scaled by 0.5-2x and shifted, scored against its own front render (framed
    by preprocessing, as a photo is): reference-view IoU >= 0.95 after alignment, the transform recorded."""
    from mpod123.evaluation.config import AlignConfig
    from mpod123.evaluation.report import EvalModels, evaluate, write_report

    rng = np.random.default_rng(seed)
    scale = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    shift = rng.uniform(-0.4, 0.4, 3)
    write_moved_glb(object_glb, tmp_path / "other.glb", scale, shift)
    ref, plain = front_reference
    cfg = EvalConfig(views=2, resolution=96, device="cpu", save_views=False)
    report = evaluate(tmp_path / "other.glb", ref, cfg, EvalModels())
    m = report.metrics
    assert m["metrics"]["iou"] >= 0.95, m["alignment"]
    a = m["alignment"]
    assert a["applied"] and not a["poor"] and a["iou_after"] >= 0.95 and a["iou_after"] > a["iou_before"]
    # whatever the tool's frame, the same mesh lands in the same place: the transforms compose to one
    # similarity (the framing's), here measured against the unmoved mesh
    assert a["scale"] * scale == pytest.approx(plain["scale"], rel=0.03)
    composed = a["scale"] * shift + np.asarray(a["translation"])
    assert np.allclose(composed, plain["translation"], atol=0.03)
    write_report(report, tmp_path / "out", save_views=False)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())["alignment"]
    assert saved["scale"] == pytest.approx(a["scale"]) and len(saved["translation"]) == 3
    # scored where it comes in, it misses
    raw = evaluate(tmp_path / "other.glb", ref, EvalConfig(views=2, resolution=96, device="cpu",
                                                             align=AlignConfig(enabled=False)), EvalModels())
    assert raw.metrics["metrics"]["iou"] < 0.8 and raw.metrics["alignment"] == {"applied": False}


def test_eval_says_when_the_alignment_is_poor(tmp_path, front_reference):
    """A flat plate against the object's front photo cannot be overlaid well: the report says so."""
    from mpod123.evaluation.report import EvalModels, evaluate
    from mpod123.export.gltf import encode_glb
    from mpod123.imaging.images import png_bytes

    x, y = np.meshgrid([-1.0, 1.0], [-0.1, 0.1])
    positions = np.stack([x.ravel(), y.ravel(), np.zeros(4)], -1).astype(np.float32)  # a wide, low plate facing +Z
    glb = encode_glb(positions, np.array([[0, 1, 3], [0, 3, 2]], np.uint32), np.zeros((4, 2), np.float32),
                     np.tile(np.float32([0, 0, 1]), (4, 1)), png_bytes(np.ones((2, 2, 3), np.float32)))
    (tmp_path / "plate.glb").write_bytes(glb)
    cfg = EvalConfig(views=2, resolution=64, device="cpu", save_views=False)
    m = evaluate(tmp_path / "plate.glb", front_reference[0], cfg, EvalModels()).metrics
    assert m["alignment"]["poor"] and m["alignment"]["iou_after"] < cfg.align.poor_iou
    assert any("alignment is poor" in n for n in m["notes"])
