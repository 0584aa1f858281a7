"""docs/architecture.md's Layout is the map of the code: every module is on it, and everything on it exists.

The Layout is one code block with one entry per line: a name (``name/`` for a folder, ``name.py`` for a
module) indented two spaces per level under its folder, then a description from column 25 (longer
descriptions continue on lines indented to that column). Only ``mpod123/``, ``backend/`` and
``blender_batch/`` are checked module by module (and the top-level entries for existence).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
CHECKED = ("mpod123", "backend", "blender_batch")
DESCRIPTION_COLUMN = 25
ENTRY = re.compile(r"^(?P<indent> *)(?P<name>[A-Za-z_][\w.\-]*/?)(?: |$)")


def layout_block(text: str) -> list[str]:
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1].splitlines()[1:]


def layout_paths(lines: list[str]) -> list[str]:
    """The paths the Layout names (folders end with '/'), from the indentation of each entry."""
    stack: list[str] = []
    paths = []
    for line in lines:
        match = ENTRY.match(line)
        if not line.strip() or not match or len(match["indent"]) >= DESCRIPTION_COLUMN - 1:
            continue  # a blank line or a description's continuation
        level = len(match["indent"]) // 2
        assert len(match["indent"]) % 2 == 0 and level <= len(stack), f"bad indentation in the Layout: {line!r}"
        del stack[level:]
        path = "".join(stack) + match["name"]
        paths.append(path)
        if path.endswith("/"):
            stack.append(match["name"])
    return paths


def _modules(package: str) -> set[str]:
    return {str(p.relative_to(ROOT)) for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts}


def _covered(module: str, named: set[str]) -> bool:
    if module in named:
        return True
    folder, _, name = module.rpartition("/")
    return name == "__init__.py" and folder + "/" in named and folder not in CHECKED


def test_the_parser_reads_folders_modules_and_continuations():
    lines = [
        "pkg/                     the package",
        "  a.py                   first line",
        "                         a continuation that names b.py",
        "  sub/                   a folder",
        "    c.py                 in the folder",
        "  d.py                   back up",
        "top.py                   a top-level file",
    ]
    assert layout_paths(lines) == ["pkg/", "pkg/a.py", "pkg/sub/", "pkg/sub/c.py", "pkg/d.py", "top.py"]


def test_every_module_is_named_in_the_layout():
    named = set(layout_paths(layout_block(DOC.read_text())))
    missing = sorted(m for pkg in CHECKED for m in _modules(pkg) if not _covered(m, named))
    assert not missing, f"add these to docs/architecture.md's Layout: {missing}"


def test_every_path_the_layout_names_exists():
    named = layout_paths(layout_block(DOC.read_text()))
    checked = [p for p in named if p.split("/")[0] in CHECKED or "/" not in p.rstrip("/")]
    assert len(checked) > 100, "the Layout was not read"
    gone = [p for p in checked if not (ROOT / p).exists() or (p.endswith("/") != (ROOT / p).is_dir())]
    assert not gone, f"docs/architecture.md's Layout names paths that do not exist: {gone}"
