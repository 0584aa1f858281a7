"""Run the Khronos glTF validator (npm package ``gltf-validator``) on a file, with the machine's node.

.ci/run installs the package into .ci/npm/node_modules before the tests; a
developer can do the same (``npm install --prefix .ci/npm gltf-validator``) or
install it globally. :func:`validator_missing` says why it cannot run, for a
skip reason. The GLB tests (tests/mpod123/export/test_gltf_io.py) and bench_export.py share it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE_PATH = os.pathsep.join(p for p in (str(ROOT / ".ci" / "npm" / "node_modules"), os.environ.get("NODE_PATH", "")) if p)
SCRIPT = r"""
const fs = require('fs');
const validator = require('gltf-validator');
const data = new Uint8Array(fs.readFileSync(process.argv[1]));
validator.validateBytes(data, {maxIssues: 200})
  .then((report) => { process.stdout.write(JSON.stringify(report)); })
  .catch((err) => { process.stderr.write(String(err)); process.exit(3); });
"""


def _env() -> dict:
    return {**os.environ, "NODE_PATH": NODE_PATH}


def validator_missing() -> str | None:
    """None when node and gltf-validator are usable, else the reason."""
    node = shutil.which("node")
    if node is None:
        return "node is not installed (the Khronos glTF validator runs on node)"
    probe = subprocess.run([node, "-e", "require.resolve('gltf-validator')"], env=_env(), capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        return "the npm package gltf-validator is not installed: npm install --prefix .ci/npm gltf-validator"
    return None


def validate(path: str | Path) -> dict:
    """The validator's JSON report for ``path`` (``issues`` holds numErrors, numWarnings, messages, ...)."""
    out = subprocess.run([shutil.which("node"), "-e", SCRIPT, str(path)], env=_env(), capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"gltf-validator failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)
