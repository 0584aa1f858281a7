from __future__ import annotations

import json

import pytest

from mpod123.config import (
    OutlineStageConfig,
    PRESETS,
    RenderConfig,
    from_dict,
    outline_preset,
    to_dict,
)


def test_paper_defaults():
    cfg = OutlineStageConfig()
    assert cfg.steps == 5000 and cfg.lr == 1e-3
    assert cfg.render.resolution == 128
    assert cfg.camera.radius == 2.5 and cfg.camera.fov_deg == 40.0
    assert (cfg.camera.reference_polar_deg, cfg.camera.reference_azimuth_deg) == (90.0, 0.0)
    assert cfg.reference_view_prob == 0.25
    lo, hi = cfg.views.polar_range_deg
    assert lo < 90.0 < hi, "novel views must straddle the reference elevation"
    assert cfg.views.azimuth_range_deg == (-180.0, 180.0)


def test_round_trip_through_json():
    cfg = outline_preset("draft")
    cfg.views.polar_range_deg = (30.0, 100.0)
    back = from_dict(OutlineStageConfig, json.loads(json.dumps(to_dict(cfg))))
    assert back == cfg
    assert isinstance(back.views.polar_range_deg, tuple)


def test_unknown_field_is_an_error():
    data = to_dict(OutlineStageConfig())
    data["render"]["resolutoin"] = 64
    with pytest.raises(ValueError, match="resolutoin"):
        from_dict(OutlineStageConfig, data)


def test_presets_shrink_the_budget():
    steps = {name: outline_preset(name).steps for name in PRESETS}
    assert steps["paper"] > steps["fast"] > steps["draft"]
    with pytest.raises(ValueError, match="unknown preset"):
        outline_preset("turbo")


def test_step_size_covers_the_box_diagonal():
    rc = RenderConfig(samples_per_ray=100)
    assert rc.step_size(1.0) * 100 == pytest.approx(2 * 3**0.5)
