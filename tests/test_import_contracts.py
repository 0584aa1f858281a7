"""The layering rules as import contracts (pyproject.toml's ``[tool.importlinter]``), checked by import-linter.

Imports inside functions count: import-linter reads every import statement in a file. The second
test breaks the rules on purpose in a copy of the packages and expects the check to catch it, so the
first can not pass by checking nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="the import contracts need import-linter: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mpod123", "backend", "blender_addon", "blender_batch")


def _lint(root: Path) -> subprocess.CompletedProcess:
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def _copy_packages(dest: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.whl", "*.zip", "wheels"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def test_the_contracts_name_every_layer_and_rule():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    by_id = {c["id"]: c for c in contracts}
    layers = by_id["mpod123-layers"]["layers"]
    assert layers[0] == "cli" and layers[-1] == "config" and by_id["mpod123-layers"]["exhaustive"] is True
    assert layers.index("stages") < layers.index("guidance") < layers.index("export") < layers.index("rendering")
    assert layers.index("rendering") < layers.index("geometry") < layers.index("fields") < layers.index("camera")
    assert set(by_id["mpod123-alone"]["forbidden_modules"]) >= {"zmq", "bpy", "backend", "blender_addon", "blender_batch"}
    assert set(by_id["backend-no-blender"]["forbidden_modules"]) >= {"bpy", "blender_addon"}
    assert set(by_id["addon-no-torch"]["forbidden_modules"]) >= {"torch", "mpod123", "backend"}


def test_the_code_keeps_every_import_contract():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # an upward import hidden inside a function: the self-test registry reaching back into the fields
        ("mpod123/runtime/selftest.py", "\ndef _sneaky():\n    from ..fields import hash_grid\n",
         "mpod123.runtime is not allowed to import mpod123.fields"),
        # the method loading the service by a plain import
        ("mpod123/pipeline/runner.py", "\nimport backend.protocol\n", "mpod123 never imports the service"),
        # one job kind borrowing from another
        ("backend/kinds/texture.py", "\nfrom .image import run_image\n", "backend's job kinds never import one another"),
    ],
)
def test_a_broken_rule_in_a_copy_is_caught(tmp_path, module, line, broken):
    root = _copy_packages(tmp_path)
    target = root / module
    target.write_text(target.read_text() + line)
    out = _lint(root)
    assert out.returncode != 0, out.stdout
    assert broken in out.stdout and "BROKEN" in out.stdout
