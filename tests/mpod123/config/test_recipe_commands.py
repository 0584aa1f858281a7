"""`mpod123 preprocess`, and `generate --set name=value` / `--config run.json`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from mpod123.cli.main import main
from mpod123.config import pipeline_preset, to_dict
from mpod123.config.overrides import OverrideError, apply_overrides, load_config, run_config


def _object_photo(path, size=(200, 150), backdrop=0.93, cut=None):
    from mpod123.camera import orbit_cameras
    from mpod123.bench.synthetic import render_object

    rgba = render_object(orbit_cameras(90.0, 0.0, 2.5, 40.0, size[0], size[1]))[0].numpy()
    rng = np.random.default_rng(0)
    img = rgba[..., :3] * rgba[..., 3:] + (backdrop + rng.normal(0, 0.005, rgba.shape[:2] + (3,))) * (1 - rgba[..., 3:])
    if cut:
        img = img[:cut]
    Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)
    return path, rgba[..., 3] >= 0.5


def test_preprocess_command_writes_the_cutout_and_says_how_sure(tmp_path, capsys):
    photo, truth = _object_photo(tmp_path / "photo.png")
    code = main(["preprocess", str(photo), "-o", str(tmp_path / "out"), "--size", "256"])
    assert code == 0
    said = capsys.readouterr().out
    assert "plain-background (confidence" in said
    out = tmp_path / "out"
    assert Image.open(out / "input.png").size == (256, 256) and Image.open(out / "input.png").mode == "RGBA"
    assert Image.open(out / "mask.png").size == (256, 256)
    matte = np.asarray(Image.open(out / "matte.png")) >= 128
    assert matte.shape == (150, 200), "the alpha at the photo's own size"
    assert (matte & truth).sum() / (matte | truth).sum() > 0.95
    summary = json.loads((out / "preprocess.json").read_text())
    assert summary["method"] == "plain-background" and summary["confidence"] >= 0.5


def test_preprocess_command_exits_2_when_it_refuses(tmp_path, capsys):
    photo, _ = _object_photo(tmp_path / "cut.png", cut=75)  # the object runs off the bottom edge
    assert main(["preprocess", str(photo), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mpod123: error: ") and "Traceback" not in err
    assert "touches the image border" in err and "--matting plain" in err
    assert not (tmp_path / "out" / "input.png").exists()
    assert main(["preprocess", str(photo), "-o", str(tmp_path / "out"), "--matting", "plain"]) == 0


def test_overrides_are_validated_against_the_typed_config():
    cfg = apply_overrides(pipeline_preset("draft"), [
        "detail.sdf_lr=3e-3", "sd.weight=0.2", "outline.views.polar_range_deg=[60, 120]",
        "detail.shading=albedo", "embedding=null", "outline.steps=7", "sd.prompt=a photo of <e>",
    ])
    assert cfg.detail.sdf_lr == 3e-3 and cfg.sd.weight == 0.2 and cfg.outline.steps == 7
    assert cfg.outline.views.polar_range_deg == (60.0, 120.0) and cfg.detail.shading == "albedo"
    assert cfg.sd.prompt == "a photo of <e>" and cfg.embedding is None
    assert cfg.overrides[0] == "detail.sdf_lr=3e-3" and len(cfg.overrides) == 7
    for bad, message in [
        ("detail.sdf_lrr=1", "no field 'sdf_lrr'"),
        ("detail.steps=many", "integer"),
        ("detail.steps=2.5", "integer"),
        ("detail.shading=phong", "one of 'lambertian', 'albedo'"),
        ("outline.views.polar_range_deg=[1, 2, 3]", "2 values"),
        ("detail.dmtet=3", "group of settings"),
        ("detail.steps.x=1", "is a value"),
        ("detail.steps", "name=value"),
        ("deterministic=1", "true or false"),
    ]:
        with pytest.raises(OverrideError, match=message):
            apply_overrides(pipeline_preset("draft"), [bad])


def test_config_file_reruns_the_recorded_configuration(tmp_path):
    cfg = run_config("draft", 5, None, ["detail.sdf_lr=2e-3"])
    (tmp_path / "run.json").write_text(json.dumps({"status": "done", "config": to_dict(cfg)}))
    again = run_config("paper", None, str(tmp_path / "run.json"), [])
    assert again == cfg and again.seed == 5 and again.preset == "draft"
    other = run_config("paper", 9, str(tmp_path / "run.json"), ["sd.weight=0.5"])
    assert other.seed == 9 and other.sd.weight == 0.5 and other.detail.sdf_lr == 2e-3
    (tmp_path / "bad.json").write_text(json.dumps({"config": {"detail": {"nope": 1}}}))
    with pytest.raises(OverrideError, match="nope"):
        load_config(tmp_path / "bad.json")


def test_generate_rejects_a_bad_override_before_any_work(tmp_path, capsys):
    photo, _ = _object_photo(tmp_path / "p.png")
    code = main(["generate", str(photo), "-o", str(tmp_path / "x.glb"), "--tiny", "--set", "detail.sdf_lr=fast"])
    assert code == 2 and "takes a number" in capsys.readouterr().err
    assert not (tmp_path / "x.work").exists()


@pytest.mark.slow
def test_generate_records_the_overrides_in_run_json(tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    monkeypatch.setenv("MPOD123_TINY_MODELS", str(tmp_path / "tiny"))
    photo, _ = _object_photo(tmp_path / "p.png")
    sets = ["outline.steps=3", "detail.steps=3", "inversion.steps=1", "outline.preview_every=0",
            "detail.preview_every=0", "export.uv_backend=torch", "export.texture_size=32", "detail.dmtet.resolution=16",
            "detail.sdf_lr=2e-3"]
    args = ["generate", str(photo), "-o", str(tmp_path / "a.glb"), "--preset", "draft", "--tiny", "--device", "cpu"]
    assert main(args + [x for s in sets for x in ("--set", s)]) == 0
    record = json.loads((tmp_path / "a.work" / "run.json").read_text())
    assert record["config"]["overrides"] == sets and record["config"]["detail"]["sdf_lr"] == 2e-3
    assert record["config"]["detail"]["steps"] == 3 and record["input"]["confidence"] >= 0.5
    assert load_config(tmp_path / "a.work" / "run.json").detail.sdf_lr == 2e-3
    assert os.path.getsize(tmp_path / "a.glb") > 0
