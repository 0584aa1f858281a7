"""What ``gpu_check.py`` and ``pipeline_gpu.py`` share: a JSON record written step by step, the
targets, and the exit code.

* :class:`StepRecord` rewrites its file after every finished step, atomically (a temporary file
  in the same folder, then ``os.replace``), so a check killed in the middle leaves every step it
  finished on disk, and never a half-written file.
* :data:`TARGETS` and :func:`compare_targets`: the figures a run must meet on one H100.
* :func:`exit_code`: 0 when every installed accelerator passed, every check held and every
  target was met; 1 when anything failed or a target was missed; :data:`NOTHING_ACCELERATED`
  (3) when nothing failed but no accelerator was tested at all (none installed, or no CUDA),
  so that a run with nothing to test can never read as green.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

OK, FAILED, NOTHING_ACCELERATED = 0, 1, 3


@dataclass(frozen=True)
class Target:
    """What one preset must meet on one H100 (the project's goals, README "GPU needs")."""

    minutes: float
    """Extrapolated wall time of the whole run (preprocessing, three stages, export)."""
    peak_gb: float | None = None
    """Peak GPU memory (``torch.cuda.max_memory_allocated``); None: no memory target."""


TARGETS: dict[str, Target] = {"paper": Target(10.0, 24.0), "fast": Target(3.0)}


def write_atomic(path: Path, record: dict) -> None:
    """Write ``record`` as JSON so that ``path`` holds either the old or the new text, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class StepRecord:
    """A JSON record on disk that grows one finished step at a time (``steps_done`` lists them in order)."""

    def __init__(self, path: Path, head: dict) -> None:
        self.path = Path(path)
        self.data = {**head, "steps_done": []}
        write_atomic(self.path, self.data)

    def step(self, name: str, value) -> None:
        self.data[name] = value
        self.data["steps_done"].append(name)
        write_atomic(self.path, self.data)

    def set(self, name: str, value) -> None:
        """Update a field that is not a step (a running total, the final verdict)."""
        self.data[name] = value
        write_atomic(self.path, self.data)


def compare_targets(row: dict) -> dict | None:
    """A pipeline row (``pipeline_gpu.py``) against its preset's target; None when it has none."""
    target = TARGETS.get(row["preset"])
    if target is None:
        return None
    minutes, peak = row.get("extrapolated_total_min"), row.get("peak_gpu_gb")
    missed = []
    if minutes is None or minutes > target.minutes:
        missed.append(f"{minutes} min > {target.minutes:g} min")
    if target.peak_gb is not None and (peak is None or peak > target.peak_gb):
        missed.append(f"peak {peak} GB > {target.peak_gb:g} GB")
    return {"minutes": minutes, "target_minutes": target.minutes, "peak_gpu_gb": peak, "target_peak_gb": target.peak_gb,
            "met": not missed, "missed": missed}


def exit_code(accelerators: dict[str, dict], checks: dict[str, dict],
              targets: dict[str, dict | None]) -> tuple[int, list[str]]:
    """The check's exit code and the reasons for anything but 0 (see the module's docstring).

    ``accelerators``: name -> {"verdict", "reason"}; ``checks``: name -> {"ok", "reason"};
    ``targets``: preset -> :func:`compare_targets`'s result (None: not compared)."""
    problems = [f"accelerator {n}: {a['reason']}" for n, a in accelerators.items() if a["verdict"] == "fail"]
    problems += [f"check {n}: {c['reason']}" for n, c in checks.items() if not c["ok"]]
    problems += [f"target {p}: {', '.join(t['missed'])}" for p, t in targets.items() if t is not None and not t["met"]]
    if problems:
        return FAILED, problems
    if not any(a["verdict"] == "pass" for a in accelerators.values()):
        why = "; ".join(f"{n} {a['verdict']}" for n, a in accelerators.items())
        return NOTHING_ACCELERATED, [f"nothing accelerated was tested ({why})"]
    return OK, []
