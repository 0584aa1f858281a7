"""Importing the method package must not load the service, Blender or heavy optional modules."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FORBIDDEN = [
    "zmq", "bpy", "diffusers", "transformers", "tinycudann", "nerfacc", "kaolin", "nvdiffrast", "xatlas", "trimesh",
    "backend", "blender_addon",
]
MODULES = [
    "mpod123",
    "mpod123.config",
    "mpod123.runtime.progress",
    "mpod123.camera",
    "mpod123.fields",
    "mpod123.rendering",
    "mpod123.geometry",
    "mpod123.export",
    "mpod123.guidance",
    "mpod123.stages",
    "mpod123.bench.reconstruct",
    "mpod123.cli.main",
    "mpod123.evaluation",
    "mpod123.cli.evaluation",
    "mpod123.pipeline.preprocess",
    "mpod123.pipeline.generate",
]


def _loaded_after_import(module: str) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        f"print(json.dumps(sorted(m for m in {FORBIDDEN!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", MODULES)
def test_import_loads_no_forbidden_module(module):
    assert _loaded_after_import(module) == []


def test_progress_module_is_pure_python():
    code = "import sys, mpod123.runtime.progress; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_probe_detects_a_loaded_module():
    # The check above would pass vacuously if the subprocess could not see imports at all.
    code = "import sys, json; import mpod123.camera; print(json.dumps('torch' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) is True


@pytest.mark.parametrize("module", ["backend.server", "backend.workers", "backend.demo"])
def test_backend_service_modules_load_no_torch_or_blender(module):
    code = (
        f"import sys, json, {module}; "
        "print(json.dumps(sorted(m for m in ('torch', 'bpy', 'mpod123', 'diffusers') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
