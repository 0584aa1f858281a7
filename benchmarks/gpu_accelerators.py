"""The accelerator half of ``gpu_check.py``: extensions, verdicts, parity tests per accelerator.

Three steps, in this order:

1. :func:`build_extensions`: clears stale torch extension locks (:func:`clear_stale_locks`),
   then imports every installed accelerator and, on a CUDA device, builds or loads its
   compiled extension with no time cap (nerfacc compiles with nvcc and ninja on first use,
   minutes; a time cap that killed it would leave the lock that makes every later load wait
   forever).
2. :func:`verdicts`: per accelerator, ``not installed`` (not importable), ``unusable`` (installed,
   but this device cannot run it: no CUDA), or a provisional ``pass`` / ``fail`` from the
   extension and the parity self-test that ``backend="auto"`` runs before it picks one.
3. :func:`run_parity`: the CUDA parity tests of each accelerator (``PARITY``: exact test ids,
   never a keyword filter, which also picks CPU tests that always pass), run with pytest,
   counted as passed / failed / skipped per accelerator from a JUnit XML report. An
   accelerator passes only when its self-test and every parity test passed and at least one
   ran; a parity test that skipped on an installed accelerator is a failure, with pytest's
   reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from mpod123.runtime.accelerators import ACCELERATORS, probe, probe_extension, unavailable_reason

ROOT = Path(__file__).resolve().parent.parent

PARITY: dict[str, list[str]] = {
    "tcnn": ["tests/mpod123/fields/test_hash_grid.py::test_tcnn_parity_values_and_gradients"],
    "nerfacc": ["tests/mpod123/rendering/test_rendering.py::test_nerfacc_marching_matches_the_torch_reference"],
    "kaolin": ["tests/mpod123/geometry/test_geometry.py::test_kaolin_marching_tets_matches_the_reference"],
    "nvdiffrast": ["tests/mpod123/rendering/test_rasterizer.py::test_nvdiffrast_matches_the_torch_rasterizer"],
}
"""Accelerator -> its parity tests (torch twin against the accelerator, values and gradients, CUDA only)."""

PIPELINE_COMPONENT = {"tcnn": "hash_grid", "nerfacc": "ray_marching", "nvdiffrast": "rasterizer"}
"""Accelerator -> the key of ``run.json``'s ``backends`` that says whether the pipeline used it
(kaolin has none: ``auto`` never picks it)."""

VERDICTS = ("pass", "fail", "not installed", "unusable")


def extension_roots() -> list[Path]:
    """Where torch builds JIT extensions: ``$TORCH_EXTENSIONS_DIR/<name>``, else
    ``<user cache>/torch_extensions/<pyXY_cuZZ>/<name>``."""
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    if env:
        return [Path(env)]
    from torch.utils.cpp_extension import get_default_build_root

    return [Path(get_default_build_root())]


def _lock_holders(lock: Path) -> list[int] | None:
    """Pids of the processes that hold ``lock`` open (torch's FileBaton keeps its file descriptor
    open while it builds); None where /proc cannot tell (not Linux)."""
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return None
    target = str(lock.resolve())
    holders = []
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            fds = list((pid_dir / "fd").iterdir())
        except OSError:  # gone, or another user's process
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    holders.append(int(pid_dir.name))
                    break
            except OSError:
                continue
    return holders


def clear_stale_locks(roots: list[Path] | None = None, min_age_s: float = 2.0,
                      unknown_age_s: float = 3600.0) -> list[str]:
    """Remove torch extension locks that no live process holds; returns one message per lock found.

    torch's JIT build (``torch.utils.cpp_extension.load``) creates ``<build dir>/lock`` and keeps
    it open while it compiles; a build killed mid-way (a time cap, Ctrl-C) leaves the file, and
    every later load of that extension waits for it forever. A lock that no process holds open
    and that is older than ``min_age_s`` is stale. Where /proc cannot say who holds it, only a
    lock older than ``unknown_age_s`` is removed."""
    messages = []
    for root in roots if roots is not None else extension_roots():
        if not root.is_dir():
            continue
        for lock in sorted({*root.glob("*/lock"), *root.glob("*/*/lock")}):
            try:
                age = time.time() - lock.stat().st_mtime
            except OSError:
                continue
            holders = _lock_holders(lock)
            if holders:
                messages.append(f"{lock}: held by pid {', '.join(map(str, holders))} (a build in progress); left alone")
                continue
            limit = min_age_s if holders is not None else unknown_age_s
            if age < limit:
                messages.append(f"{lock}: {age:.0f} s old, holder unknown; left alone")
                continue
            try:
                lock.unlink()
            except OSError as exc:
                messages.append(f"{lock}: stale, but could not be removed ({exc}); remove it by hand")
                continue
            messages.append(f"{lock}: removed a stale lock left by a killed extension build ({age:.0f} s old, "
                            "no process holds it); the extension builds again now")
    return messages


def build_extensions(device: str, log=print) -> dict:
    """Clear stale locks, then import each accelerator and (on CUDA) build or load its extension,
    with no time cap. Returns ``{"locks": [...], "<accelerator>": {...}}``."""
    out: dict = {"locks": clear_stale_locks()}
    for message in out["locks"]:
        log(f"gpu_check: torch extension lock {message}")
    cuda = torch.device(device).type == "cuda"
    for name, acc in ACCELERATORS.items():
        t0 = time.perf_counter()
        row: dict = {"module": acc.module}
        module = probe(name)
        row["installed"] = module is not None
        if module is None:
            row["extension"] = "not installed"
        elif acc.extension is None:
            row["extension"] = "none needed (built at install time)"
        elif not cuda:
            row["extension"] = f"not loaded: needs a CUDA device, this run is on {torch.device(device).type}"
        else:
            log(f"gpu_check: loading {acc.module}'s CUDA extension (a first use compiles it, minutes; no time limit)")
            failed = probe_extension(name)
            row["extension"] = "loaded" if failed is None else failed
        row["seconds"] = round(time.perf_counter() - t0, 2)
        out[name] = row
    return out


def verdicts(device: str) -> dict[str, dict]:
    """Provisional verdict per accelerator, with the reason (before the parity tests)."""
    out = {}
    for name, acc in ACCELERATORS.items():
        module = probe(name)
        if module is None:
            why = unavailable_reason(name, "cuda")  # names the import error and the install command
            out[name] = {"verdict": "not installed", "reason": why}
            continue
        version = getattr(module, "__version__", None)
        if acc.needs_cuda and torch.device(device).type != "cuda":
            out[name] = {"verdict": "unusable", "version": version,
                         "reason": f"installed, but {acc.module} needs a CUDA device and this run is on "
                                   f"{torch.device(device).type}: nothing of it was tested"}
            continue
        why = unavailable_reason(name, device)  # extension, then the parity self-test
        out[name] = {"verdict": "fail" if why else "pass", "version": version,
                     "reason": why or "extension loads and the parity self-test passed"}
    return out


def parse_junit(path: Path) -> dict:
    """passed / failed / skipped counts and the failures' and skips' messages of a JUnit XML report."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "messages": []}
    for case in ET.parse(path).getroot().iter("testcase"):
        test = f"{case.get('classname', '')}::{case.get('name', '')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skip = case.find("skipped")
        if bad is not None:
            counts["failed"] += 1
            counts["messages"].append(f"{test} failed: {(bad.get('message') or '').strip()[:300]}")
        elif skip is not None:
            counts["skipped"] += 1
            counts["messages"].append(f"{test} skipped: {(skip.get('message') or '').strip()[:300]}")
        else:
            counts["passed"] += 1
    return counts


def run_parity(tests: list[str], junit: Path, timeout_s: float, cwd: Path = ROOT) -> dict:
    """Run ``tests`` (pytest ids) in a child pytest; counts from its JUnit report. A missing report
    (a crash, a time-out, a test id that no longer exists) is a failure with the output's tail."""
    junit.parent.mkdir(parents=True, exist_ok=True)
    junit.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={junit}", *tests]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
        rc, tail = done.returncode, (done.stdout + done.stderr)[-3000:]
    except subprocess.TimeoutExpired:
        rc, tail = 124, f"timed out after {timeout_s:.0f} s"
    row: dict = {"returncode": rc, "seconds": round(time.perf_counter() - t0, 1)}
    if junit.is_file():
        row.update(parse_junit(junit))
    else:
        row.update(passed=0, failed=len(tests), skipped=0, messages=[f"no test report: {tail.strip()[-1500:]}"])
    if rc not in (0, 1, 5) and row["failed"] == 0:  # 2-4: interrupted, internal error, usage (a missing id)
        row["failed"] = 1
        row["messages"].append(f"pytest exited {rc}: {tail.strip()[-1500:]}")
    return row


def final_verdict(provisional: dict, parity: dict | None) -> dict:
    """Fold the parity counts into a provisional verdict: ``pass`` needs every parity test run and passed."""
    row = dict(provisional)
    if provisional["verdict"] != "pass" or parity is None:
        return row
    row["parity"] = {k: parity[k] for k in ("passed", "failed", "skipped")}
    if parity["failed"]:
        row["verdict"], row["reason"] = "fail", "; ".join(parity["messages"]) or "a parity test failed"
    elif parity["skipped"] or not parity["passed"]:
        row["verdict"] = "fail"
        row["reason"] = ("installed and its self-test passed, but its parity tests did not all run: "
                         + ("; ".join(parity["messages"]) or "no test ran"))
    else:
        row["reason"] = f"self-test and {parity['passed']} parity test(s) passed"
    return row


def check_accelerators(device: str, junit_dir: Path, timeout_s: float = 600.0, log=print) -> dict[str, dict]:
    """Steps 2 and 3: provisional verdicts, then the parity tests of every accelerator that passed so far."""
    out = {}
    for name, row in verdicts(device).items():
        parity = None
        if row["verdict"] == "pass":
            parity = run_parity(PARITY[name], junit_dir / f"parity_{name}.xml", timeout_s)
        out[name] = final_verdict(row, parity)
        if parity is None:
            out[name]["parity"] = {"passed": 0, "failed": 0, "skipped": 0,
                                   "not_run": f"the accelerator is {row['verdict']}"}
        log(f"gpu_check: {name:<10} {out[name]['verdict']:<13} {out[name]['reason']}")
    return out
