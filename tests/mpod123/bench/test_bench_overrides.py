"""`mpod123 bench reconstruct --set`: the typed overrides of `generate`, on the benchmark's stages."""

from __future__ import annotations

import json

from mpod123.cli.common import EXIT_BAD_INPUT
from mpod123.cli.main import main


def test_bench_overrides_reach_the_stage_configs_and_bad_ones_exit_2(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "out"
    assert main(["bench", "make-dataset", str(data), "--views", "6", "--res", "16"]) == 0
    assert main(["bench", "reconstruct", str(data), "--holdout", "2", "--out", str(out), "--steps", "3", "--res", "12",
                 "--device", "cpu", "--set", "outline.normal_method=analytic", "--set", "outline.regulariser_rays=16",
                 "--set", "detail.dmtet.fit_to_density=false"]) == 0
    config = json.loads((out / "metrics.json").read_text())["outline"]["config"]
    assert config["normal_method"] == "analytic" and config["regulariser_rays"] == 16
    code = main(["bench", "reconstruct", str(data), "--out", str(out), "--device", "cpu", "--set", "outline.normal_methd=x"])
    assert code == EXIT_BAD_INPUT
    assert "has no field 'normal_methd'" in capsys.readouterr().err
    code = main(["bench", "reconstruct", str(data), "--out", str(out), "--device", "cpu",
                 "--set", "outline.normal_method=spline"])
    assert code == EXIT_BAD_INPUT
    assert "must be one of" in capsys.readouterr().err
