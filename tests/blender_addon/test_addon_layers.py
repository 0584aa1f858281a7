"""The add-on's house: layers that import only downward, no cycles, small modules, no private names across files.

Plain Python (no bpy): import-linter reads the sources, and a child process imports every ``core`` module.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ADDON = ROOT / "blender_addon"
CONTRACTS = ("addon-layers", "addon-ui-imported-by-nothing", "addon-core-no-bpy", "addon-no-torch", "addon-acyclic")
MAX_LINES = 400

pytest.importorskip("importlinter")


def _lint(config: Path, cwd: Path) -> subprocess.CompletedProcess:
    args = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
            "sys.exit(lint_imports_command())", "--config", str(config), "--no-cache"]
    for c in CONTRACTS:
        args += ["--contract", c]
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"})


def _addon_config(tmp: Path) -> Path:
    """pyproject's add-on contracts, for the add-on package alone (root_packages: blender_addon)."""
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contracts = [c for c in table["contracts"] if c["id"] in CONTRACTS]
    assert [c["id"] for c in contracts] == list(CONTRACTS), "pyproject.toml holds every add-on contract"
    lines = ["[importlinter]", "root_packages =", "    blender_addon", "include_external_packages = True", ""]
    for c in contracts:
        lines.append(f"[importlinter:contract:{c['id']}]")
        for key, value in c.items():
            if key == "id":
                continue
            if isinstance(value, list):
                lines.append(f"{key} =")
                lines += [f"    {v}" for v in value]
            else:
                lines.append(f"{key} = {value}")
        lines.append("")
    path = tmp / "importlinter.ini"
    path.write_text("\n".join(lines))
    return path


def _copy_addon(tmp: Path) -> Path:
    dest = tmp / "src"
    shutil.copytree(ADDON, dest / "blender_addon", ignore=shutil.ignore_patterns("__pycache__", "wheels", "*.whl"))
    for stub in ("bpy", "mathutils", "torch", "mpod123", "backend", "zmq", "numpy"):  # external packages for the graph
        (dest / f"{stub}.py").write_text("")
    return dest


def test_the_layer_contracts_hold(tmp_path):
    src = _copy_addon(tmp_path)
    out = _lint(_addon_config(tmp_path), src)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert out.stdout.count(" KEPT") == len(CONTRACTS), out.stdout[-2000:]


@pytest.mark.parametrize("module, line, broken", [
    ("core/errors.py", "import bpy", "core/ is plain Python"),
    ("blender/paths.py", "from ..session import state", "layers import only downward"),
    ("session/state.py", "from ..ui import panels", "nothing imports ui/"),
    ("session/records.py", "from . import loop", "no import cycles"),
])
def test_the_contracts_catch_a_wrong_import(tmp_path, module, line, broken):
    src = _copy_addon(tmp_path)
    path = src / "blender_addon" / module
    path.write_text(path.read_text() + f"\n{line}  # injected by the test\n")
    out = _lint(_addon_config(tmp_path), src)
    assert out.returncode != 0 and broken in out.stdout.replace("\n", " "), out.stdout[-3000:]


def _modules():
    return sorted(p for p in ADDON.rglob("*.py") if "vendor" not in p.parts)


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(ADDON)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these by task: {long}"


def test_no_private_name_crosses_files():
    """``from .x import _name`` or ``module._name`` between the add-on's own modules."""
    own = {p.stem for p in _modules()} | {"core", "blender", "session", "ui"}
    crossings = []
    for path in _modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                crossings += [f"{path.name}: from {node.module} import {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in own:
                if node.attr.startswith("_") and not node.attr.startswith("__"):
                    crossings.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert crossings == []


def test_no_module_level_mutable_state_outside_session():
    """``global`` statements (a module's variables changed by its functions) live only in session/state.py."""
    found = [f"{p.relative_to(ADDON)}: {', '.join(n.names)}" for p in _modules() for n in ast.walk(ast.parse(p.read_text()))
             if isinstance(n, ast.Global)]
    assert all(f.startswith(("session/state.py", "blender/preferences.py: _FALLBACK")) for f in found), found


def test_every_core_module_imports_without_bpy():
    names = sorted(p.stem for p in (ADDON / "core").glob("*.py") if p.stem != "__init__")
    code = ("import importlib, json, sys; sys.path.insert(0, sys.argv[1]); "
            "[importlib.import_module('blender_addon.core.' + n) for n in sys.argv[2:]]; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'bpy', 'mathutils', 'torch', 'mpod123', 'backend', 'zmq'})))")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), *names], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == ["zmq"], "only zmq (which proves the probe sees imports)"
    assert {"client", "network", "jobfile", "local_backend", "preview_glb", "prompt", "errors"} <= set(names)
