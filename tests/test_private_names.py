"""No test reaches into a module's private names: tests go through what a module offers, so a module's
insides can change without breaking tests that check its behaviour.

Checked on the syntax tree of every test file: ``from <our package> import _name``, and ``x._name`` where
``x`` is anything but the test's own object or a library's documented underscored name. ``self._name`` (a test's own
class), the tests' own helper modules and dunder names are allowed.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = ("mpod123", "backend", "blender_addon", "blender_batch", "benchmarks")
ALLOWED_OWNERS = {"self", "cls", "sys", "os", "np", "torch", "zmq", "bpy", "pytest", "json", "threading", "subprocess"}
"""Names whose private attributes a test may read: the test's own object, and libraries' documented
underscored API (``sys._getframe``, ``os._exit``, numpy's ``np._NoValue``...)."""


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def reaches(source: str) -> list[str]:
    """Every reach into a private name of our packages in one test file's source, as ``line: text``."""
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in OURS:
            found += [f"{node.lineno}: from {node.module} import {a.name}" for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ALLOWED_OWNERS:
                continue
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_check_finds_each_kind_of_reach():
    code = ("from mpod123.geometry.tet_grid import _grid\nimport backend.store as s\ns._db\nstore._lock\nself._x\n"
            "backend.server._subs\nself.a.__class__\n")
    assert reaches(code) == ["1: from mpod123.geometry.tet_grid import _grid", "3: s._db", "4: store._lock",
                             "6: backend.server._subs"]


def test_no_test_reaches_into_private_names():
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path.name == "test_private_names.py":
            continue
        offenders += [f"{path.relative_to(ROOT)}:{hit}" for hit in reaches(path.read_text())]
    assert not offenders, "use or add a public name instead:\n" + "\n".join(offenders)
