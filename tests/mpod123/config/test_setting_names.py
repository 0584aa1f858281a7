"""One name per setting: flags are other names for `--set` paths (checked once, where the setting is),
the text-to-3D candidates are reachable by `--set candidates.*`, and each accelerated component takes
only the backends that implement it."""

from __future__ import annotations

import typing

import pytest

from mpod123.cli.common import EXIT_BAD_INPUT
from mpod123.cli.generate import candidate_config, generate_config
from mpod123.cli.main import build_parser, main
from mpod123.config import PipelineConfig
from mpod123.config.backends import HashGridBackend, MarcherBackend, MarchingTetsBackend, RasterizerBackend
from mpod123.config.overrides import OverrideError, apply_overrides
from mpod123.runtime.accelerators import ACCELERATORS

parse = build_parser().parse_args


def _generate(*extra):
    args = parse(["generate", "a.png", "-o", "a.glb", "--preset", "fast", *extra])
    return generate_config(args)


def test_faces_is_export_target_faces_and_the_old_spelling_still_works():
    assert _generate().export.target_faces == 20_000
    assert _generate("--faces", "1234").export.target_faces == 1234
    assert _generate("--target-faces", "1234").export.target_faces == 1234
    assert _generate("--set", "export.target_faces=1234").export.target_faces == 1234
    assert _generate("--faces", "0").export.target_faces is None
    assert _generate("--set", "export.target_faces=0").export.target_faces is None
    cfg = _generate("--faces", "300", "--texture-size", "64")
    assert cfg.overrides == ("export.target_faces=300", "export.texture_size=64"), "recorded in run.json as settings"
    assert _generate("--faces", "300", "--set", "export.target_faces=500").export.target_faces == 500, "the last wins"


def test_one_check_whatever_the_name_and_the_message_names_what_was_typed():
    for argv, name in ((["--faces", "2"], "--faces"), (["--target-faces", "2"], "--target-faces"),
                       (["--set", "export.target_faces=2"], "--set export.target_faces")):
        with pytest.raises(OverrideError, match=f"^{name} must be at least 4 \\(or 0 for the full mesh\\), got 2$"):
            _generate(*argv)
    for argv, name in ((["--texture-size", "100000"], "--texture-size"),
                       (["--set", "export.texture_size=8"], "--set export.texture_size")):
        with pytest.raises(OverrideError, match=f"^{name} must be between 16 and 8192"):
            _generate(*argv)


def test_bench_reconstruct_spells_the_face_budget_as_generate_does(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["bench", "reconstruct", "--help"])
    assert done.value.code == 0
    rec_help = capsys.readouterr().out
    assert "--faces" in rec_help and "--target-faces" not in rec_help, "the old name is accepted, not shown"
    for flag in ("--faces", "--target-faces"):
        code = main(["bench", "reconstruct", str(tmp_path), "--out", str(tmp_path / "o"), "--device", "cpu", flag, "2"])
        assert code == EXIT_BAD_INPUT
        assert f"{flag} must be at least 4 (or 0 for the full mesh), got 2" in capsys.readouterr().err


def test_texture_checks_its_texture_size_where_generate_does(capsys):
    code = main(["texture", "m.glb", "p.png", "-o", "t.glb", "--set", "export.texture_size=9"])
    assert code == EXIT_BAD_INPUT and "--set export.texture_size must be between 16 and 8192" in capsys.readouterr().err


def test_candidates_are_reachable_by_set_and_the_flag_is_their_other_name():
    args = parse(["generate", "--prompt", "a kettle", "-o", "a.glb", "--candidates", "3", "--set", "candidates.steps=7",
                  "--set", "candidates.guidance_scale=5"])
    cands = candidate_config(args)
    cfg = generate_config(args, cands)
    assert (cands.count, cands.steps, cands.guidance_scale) == (3, 7, 5.0)
    assert cfg.overrides == ("candidates.count=3", "candidates.steps=7", "candidates.guidance_scale=5")
    tiny = parse(["generate", "--prompt", "a kettle", "-o", "a.glb", "--tiny", "--set", "candidates.count=5"])
    cands = candidate_config(tiny)
    generate_config(tiny, cands)
    assert (cands.count, cands.steps) == (5, 4), "--tiny's few steps, then the override"
    with pytest.raises(OverrideError, match="has no field 'cout'"):
        generate_config(parse(["generate", "--prompt", "k", "-o", "a.glb", "--set", "candidates.cout=3"]))
    with pytest.raises(OverrideError, match="--candidates takes an integer"):
        generate_config(parse(["generate", "--prompt", "k", "-o", "a.glb", "--candidates", "many"]))


@pytest.mark.parametrize("argv, message", [
    (["--prompt", "a kettle", "--set", "candidates.count=0"], "between 1 and 16"),
    (["in.png", "--set", "candidates.count=3"], "leave them out"),
])
def test_bad_candidate_settings_exit_2(tmp_path, capsys, argv, message):
    code = main(["generate", *argv, "-o", str(tmp_path / "x.glb"), "--tiny", "--device", "cpu", "--preset", "draft"])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and message in err, err
    assert not (tmp_path / "x.work").exists()


@pytest.mark.parametrize("assignment", [
    "detail.rasterizer_backend=nvdiffrast", "detail.dmtet.backend=kaolin", "outline.occupancy.backend=nerfacc",
    "outline.nerf.hash_grid.backend=tcnn", "detail.rasterizer_backend=torch", "detail.dmtet.backend=auto",
])
def test_each_component_accepts_its_own_accelerator(assignment):
    cfg = apply_overrides(PipelineConfig(), [assignment])
    target = cfg
    path, value = assignment.split("=")
    for name in path.split("."):
        target = getattr(target, name)
    assert target == value


@pytest.mark.parametrize("assignment, choices", [
    ("detail.rasterizer_backend=tcnn", "'auto', 'torch', 'nvdiffrast'"),
    ("detail.dmtet.backend=nvdiffrast", "'auto', 'torch', 'kaolin'"),
    ("outline.occupancy.backend=tcnn", "'auto', 'torch', 'nerfacc'"),
    ("outline.nerf.hash_grid.backend=nerfacc", "'auto', 'torch', 'tcnn'"),
])
def test_an_accelerator_of_another_component_is_refused_with_the_choices(assignment, choices):
    with pytest.raises(OverrideError, match=f"must be one of {choices}, not"):
        apply_overrides(PipelineConfig(), [assignment])


def test_each_backend_type_names_auto_torch_and_one_registered_accelerator():
    for kind, accelerator in ((HashGridBackend, "tcnn"), (MarcherBackend, "nerfacc"),
                              (RasterizerBackend, "nvdiffrast"), (MarchingTetsBackend, "kaolin")):
        assert typing.get_args(kind) == ("auto", "torch", accelerator) and accelerator in ACCELERATORS
