"""``mpod123 doctor``: what this environment can do, in one report (text or JSON).

Python; torch and its build (CUDA / ROCm / MPS / CPU); the device and its
memory; each accelerator (tinycudann, nerfacc, kaolin, nvdiffrast): absent,
or present with its parity self-test against the torch twin
(:mod:`mpod123.runtime.selftest`, registered by the modules that own the ops:
the caller imports them first) and whether ``backend="auto"`` would use it;
the pipeline's weights (in the cache or not, and their size); free disk where
the cache and the data live. The add-on's Check Backend runs ``doctor
--json`` in its managed environment; the backend's hello reply carries
:func:`hello_summary`.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import weights as models

GB = 1e9


def torch_info() -> dict[str, Any]:
    import torch

    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    hip = getattr(torch.version, "hip", None)
    build = "rocm" if hip else "cuda" if torch.version.cuda else "mps" if mps else "cpu"
    return {"version": torch.__version__, "build": build, "cuda": torch.version.cuda, "hip": hip,
            "cuda_available": torch.cuda.is_available(), "mps_available": mps}


def device_info() -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {"type": "cuda", "name": props.name, "memory_gb": round(props.total_memory / GB, 1),
                "count": torch.cuda.device_count()}
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return {"type": "mps", "name": platform.machine(), "memory_gb": _ram_gb()}
    return {"type": "cpu", "name": platform.processor() or platform.machine(), "memory_gb": _ram_gb(),
            "threads": torch.get_num_threads()}


def _ram_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB, 1)
    except (AttributeError, ValueError, OSError):
        return None


def accelerators(device_type: str, self_test: bool = True) -> dict[str, dict[str, Any]]:
    """Each accelerator: present or not, its self-test, and whether ``auto`` would choose it here."""
    import importlib.util

    import torch

    from . import accelerators as _optional
    from . import selftest as accel_selftest

    device = torch.device("cuda" if device_type == "cuda" else "cpu")
    out = {}
    for name, acc in _optional.ACCELERATORS.items():
        top = acc.module.split(".")[0]
        entry: dict[str, Any] = {"module": acc.module, "present": False, "self_test": "not run", "detail": "",
                                 "auto": False}
        if importlib.util.find_spec(top) is None:
            entry["detail"] = f"not installed; install with: {acc.install_hint}"
            out[name] = entry
            continue
        module = _optional.probe(name)
        entry["present"] = module is not None
        if module is None:
            entry["detail"] = f"installed but does not import: {_optional._probed.get(name)}"
        elif acc.needs_cuda and device.type != "cuda":
            entry["detail"] = f"needs a CUDA device; this machine runs on {device_type}"
        elif self_test and name not in accel_selftest.SELF_TESTS:
            entry["self_test"] = "not registered"
            entry["detail"] = ("no self-test registered in this process (the module that owns the op registers it "
                               "when imported; importing mpod123.rendering registers them all)")
            entry["auto"] = True
        elif self_test:
            failed = accel_selftest.check(name, device)
            entry["self_test"] = "failed" if failed else "passed"
            entry["detail"] = failed or "matches the torch path"
            entry["auto"] = not failed
        out[name] = entry
    return out


def _free_gb(path: Path) -> dict[str, Any]:
    probe = Path(path).expanduser()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError as exc:
        return {"path": str(path), "free_gb": None, "error": str(exc)}
    return {"path": str(path), "free_gb": round(usage.free / GB, 1)}


def collect(data: str | Path | None = None, zero123: str | None = None, sd: str | None = None,
            self_test: bool = True) -> dict[str, Any]:
    """The whole report as a dict (what ``--json`` prints)."""
    t0 = time.monotonic()
    specs = models.pipeline_models(zero123 or os.environ.get("MPOD123_ZERO123"), sd or os.environ.get("MPOD123_SD"))
    tinfo = torch_info()
    dev = device_info()
    acc = accelerators(dev["type"], self_test)
    weights = [asdict(models.status(s)) for s in specs]
    data_dir = Path(data) if data else Path.cwd()
    report = {
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "torch": tinfo,
        "device": dev,
        "accelerators": acc,
        "weights": weights,
        "weights_summary": models.summary(specs),
        "disk": {"cache": _free_gb(models.hub_cache()), "data": _free_gb(data_dir)},
    }
    used = [n for n, a in acc.items() if a["auto"]]
    failed = [n for n, a in acc.items() if a["self_test"] == "failed"]
    device = dev["type"].upper() if dev["type"] != "cuda" else f"GPU {dev['name']} ({dev['memory_gb']} GB)"
    parts = [f"{device}, torch {tinfo['version']} ({tinfo['build']})",
             f"accelerators: {', '.join(used) if used else 'none'}"]
    if failed:
        parts.append(f"failed self-test: {', '.join(failed)}")
    parts.append(report["weights_summary"])
    report["summary"] = "; ".join(parts)
    report["summary_lines"] = parts
    report["seconds"] = round(time.monotonic() - t0, 2)
    return report


def format_text(report: dict[str, Any]) -> str:
    lines = [
        f"Python      {report['python']['version']} ({report['python']['executable']})",
        f"torch       {report['torch']['version']}, build {report['torch']['build']}",
        f"device      {report['device']['type']}: {report['device']['name']}, {report['device']['memory_gb']} GB",
    ]
    for name, a in report["accelerators"].items():
        state = ("absent" if not a["present"] else
                 f"present, self-test {a['self_test']}{', used by auto' if a['auto'] else ', not used by auto'}")
        lines.append(f"{name:<11} {state}: {a['detail']}")
    for w in report["weights"]:
        where = w["path"] or "not in the cache"
        size = f"{w['bytes_on_disk'] / GB:.1f} GB on disk" if w["ready"] else f"about {w['download_bytes'] / GB:.1f} GB to download"
        lines.append(f"weights     {w['role']}: {w['source']}: {'ready' if w['ready'] else 'missing'} ({size}; {where})")
    for what, d in report["disk"].items():
        lines.append(f"disk        {what}: {d['free_gb']} GB free at {d['path']}")
    lines.append(f"summary     {report['summary']}")
    return "\n".join(lines)


# ------------------------------------------------------------------ the hello reply
_HELLO_CACHE: dict[str, Any] = {}
HELLO_TTL_S = 30.0


def hello_summary(info: dict[str, Any]) -> str:
    """One line for the backend's hello reply: ``GPU: ..., models: ready`` (cheap: no torch, cached 30 s).

    ``info`` is the server's own: ``gpu`` (names from the driver, or cpu) and
    ``job`` (the tiny job needs no weights). Model locations come from the
    environment ``serve`` sets for its workers.
    """
    now = time.monotonic()
    key = repr(sorted(info.items()))
    hit = _HELLO_CACHE.get(key)
    if hit and now - hit[0] < HELLO_TTL_S:
        return hit[1]
    gpu = info.get("gpu") or "cpu"
    gpu_text = "none (CPU)" if gpu == "cpu" else str(gpu)
    if "tiny" in str(info.get("job", "")):
        text = f"GPU: {gpu_text}, models: tiny (built in, no download)"
    else:
        specs = models.pipeline_models(os.environ.get("MPOD123_ZERO123"), os.environ.get("MPOD123_SD"))
        text = f"GPU: {gpu_text}, {models.summary(specs)}"
    _HELLO_CACHE[key] = (now, text)
    return text
