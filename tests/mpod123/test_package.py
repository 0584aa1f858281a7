"""`import mpod123` stays cheap, and the modules' old paths still import, for one release, as the
module at the new path with a DeprecationWarning that names it."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import mpod123

ROOT = Path(__file__).resolve().parents[2]


def test_import_mpod123_loads_no_torch_and_nothing_heavy():
    code = ("import json, sys, mpod123; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'numpy', 'zmq', 'bpy', 'diffusers', 'transformers', 'backend', 'blender_batch'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_package_top_holds_only_init_and_main():
    assert sorted(p.name for p in (ROOT / "mpod123").glob("*.py")) == ["__init__.py", "__main__.py"]


@pytest.mark.parametrize("old, new", sorted(mpod123.MOVED_MODULES.items()))
def test_an_old_path_imports_as_the_new_module_with_a_warning(old, new):
    assert importlib.util.find_spec(new) is not None, f"{new} does not exist"
    assert not (ROOT / (old.replace(".", "/") + ".py")).exists(), f"{old} is a real module again; drop its alias"
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(new) and module.__name__ == new
    assert module.__spec__.name == new, "the module keeps its own spec (reload and pickling read it)"
    assert [str(w.message).split(":")[0] for w in caught if w.category is DeprecationWarning] == [f"{old} moved to {new}"]


def test_from_imports_of_the_old_paths_work_in_a_fresh_interpreter():
    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            "try:\n    from mpod123.progress import Progress\nexcept DeprecationWarning as w:\n    print(w)\n"
            "import warnings; warnings.simplefilter('ignore', DeprecationWarning)\n"
            "from mpod123.progress import Progress; import mpod123.runtime.progress as p\n"
            "from mpod123 import tiny; from mpod123._optional import resolve_backend\n"
            "print(Progress is p.Progress, tiny.__name__, resolve_backend.__module__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("mpod123.progress moved to mpod123.runtime.progress: import mpod123.runtime.progress")
    assert lines[1] == "True mpod123.runtime.tiny_models mpod123.runtime.accelerators"
