"""Other packages' command groups join `mpod123` through the `mpod123.commands` entry points, so the
method package never names the service or the batch package."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mpod123.cli.common import COMMAND_GROUP, command_groups
from mpod123.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[3]
REINSTALL = "the installed metadata lacks them: reinstall the package (pip install -e .)"


def test_pyproject_declares_the_command_entry_points():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"][COMMAND_GROUP] == {
        "service": "backend.commands:register", "batch": "blender_batch.commands:register",
    }


def test_the_registry_finds_the_service_and_batch_groups():
    groups = command_groups()
    assert {"service", "batch"} <= set(groups), REINSTALL
    assert groups["service"].value == "backend.commands:register"
    assert groups["batch"].load().__module__ == "blender_batch.commands"


def test_their_commands_are_in_the_parser(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    choices = set(re.search(r"\{([a-z,-]+)\}", capsys.readouterr().out).group(1).split(","))
    assert {"serve", "keys", "client", "batch"} <= choices, REINSTALL
    assert {"generate", "texture", "preprocess", "bench", "eval", "eval-set", "doctor", "models"} <= choices


def test_serve_and_batch_help_work_through_the_console_command():
    for command, words in (("serve", "--bind"), ("batch", "--catalog"), ("client", "submit")):
        out = subprocess.run([sys.executable, "-m", "mpod123", command, "--help"], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0 and words in out.stdout, out.stderr


def test_the_method_package_names_neither_the_service_nor_the_batch_package():
    """No import and no module name in a string (``importlib.import_module("backend.commands")``)."""
    named = []
    for path in sorted(ROOT.glob("mpod123/**/*.py")):
        tree = ast.parse(path.read_text(), str(path))
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if not node.level else []
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                names = [node.value] if "." in node.value or ":" in node.value else []  # a module path, not a word
            else:
                continue
            named += [f"{path.relative_to(ROOT)}: {n}" for n in names
                      if n.replace(":", ".").split(".")[0] in ("backend", "blender_batch", "blender_addon")]
    assert named == []
