"""Every command group turns what the user can fix into exit 2 with one line, never a traceback, in
one place (``mpod123.cli.common.run_command``); exit codes are defined once."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from mpod123.cli.common import EXIT_BAD_INPUT, EXIT_FAILURE, run_command
from mpod123.cli.main import main
from mpod123.runtime.errors import Mpod123Error

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    data = tmp_path_factory.mktemp("ds")
    assert main(["bench", "make-dataset", str(data), "--views", "4", "--res", "16"]) == 0
    return data


def _reconstruct(data, out, *extra):
    return main(["bench", "reconstruct", str(data), "--holdout", "1", "--out", str(out), "--steps", "2", "--res", "8",
                 "--device", "cpu", *extra])


def test_a_named_accelerator_that_cannot_run_exits_2_with_its_message_and_no_traceback(dataset, tmp_path, capsys):
    code = _reconstruct(dataset, tmp_path / "o", "--set", "outline.nerf.hash_grid.backend=tcnn")
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT, err
    assert "backend 'tcnn' was requested but tinycudann needs a CUDA device" in err and "'torch' or 'auto'" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_a_missing_xatlas_exits_2_with_how_to_install_it_and_no_traceback(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "xatlas", None)  # what a Python without the package answers: not importable
    code = _reconstruct(dataset, tmp_path / "o", "--stage", "detail", "--detail-steps", "1", "--detail-res", "8",
                        "--tet-res", "4", "--uv", "xatlas", "--texture-size", "16")
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT, err
    assert "mpod123: error: xatlas is not installed: pip install xatlas" in err
    assert "Traceback" not in err


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("group, argv, message", [
    ("generate", ["generate", "a.png", "-o", "{tmp}/a.glb", "--set", "detail.nope=1"], "has no field 'nope'"),
    ("generate", ["generate", "{tmp}/junk.png", "-o", "{tmp}/a.glb", "--tiny", "--device", "cpu",
                  "--preset", "draft"], "junk.png"),
    ("texture", ["texture", "m.glb", "p.png", "-o", "{tmp}/t.glb", "--texture-size", "9"], "--texture-size"),
    ("preprocess", ["preprocess", "{tmp}/junk.png", "-o", "{tmp}/pre"], "junk.png"),
    ("eval", ["eval", "{tmp}/junk.glb", "--reference", "{tmp}/junk.png", "--out", "{tmp}/ev", "--device", "cpu"],
     "junk.glb"),
    ("bench", ["bench", "reconstruct", "{tmp}", "--out", "{tmp}/o", "--device", "cpu"], "no transforms_train.json"),
    ("models", ["models", "list", "nope"], "not one of the pipeline's models"),
    ("device", ["bench", "texture", "{tmp}", "--device", "nonsense"], "--device 'nonsense'"),
    ("serve", ["serve", "--bind", "tcp://0.0.0.0:0", "--data", "{tmp}/d"], "--keys"),
    ("client", ["client", "status", "j", "--server-key", "{tmp}/k"], "--client-key"),
    ("batch", ["batch", "{tmp}", "--out", "{tmp}/b", "--steps", "0"], "--steps must be at least 1"),
])
def test_every_command_group_maps_bad_input_to_exit_2_with_one_line(tmp_path, capsys, group, argv, message):
    _write(tmp_path / "junk.png", b"not an image")
    _write(tmp_path / "junk.glb", b"not a glb")
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT, err
    assert message in err and "Traceback" not in err, err
    assert err.startswith("mpod123: error: "), err


def test_a_failure_of_ours_keeps_its_traceback_and_exits_1(capsys):
    def broken(args):
        raise RuntimeError("an internal bug")

    def refused(args):
        raise Mpod123Error("change this")

    assert run_command(broken, None) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "Traceback" in err and "mpod123: failed: RuntimeError: an internal bug" in err
    assert run_command(refused, None) == EXIT_BAD_INPUT
    assert capsys.readouterr().err == "mpod123: error: change this\n"


def test_exit_codes_are_defined_in_one_module_only():
    defined = {}
    for path in sorted([*ROOT.glob("mpod123/**/*.py"), *ROOT.glob("backend/**/*.py"), *ROOT.glob("blender_batch/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Assign):
                names = [t for target in node.targets for t in ast.walk(target) if isinstance(t, ast.Name)]
                for name in names:
                    if name.id.startswith("EXIT_"):
                        defined.setdefault(str(path.relative_to(ROOT)), set()).add(name.id)
    assert defined == {"mpod123/cli/common.py": {"EXIT_OK", "EXIT_FAILURE", "EXIT_BAD_INPUT", "EXIT_INTERRUPTED"}}


def test_command_modules_do_not_catch_errors_to_print_them_themselves():
    """The mapping lives in run_command: no command module prints an error and returns 2 on its own."""
    offenders = []
    for path in [*ROOT.glob("mpod123/cli/*.py"), ROOT / "backend" / "commands.py", ROOT / "blender_batch" / "commands.py"]:
        if path.name == "common.py":
            continue
        text = path.read_text()
        if "return 2" in text or "EXIT_BAD_INPUT" in text or ": error:" in text:
            offenders.append(path.name)
    assert offenders == []
