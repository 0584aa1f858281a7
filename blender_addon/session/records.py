"""The job list and the job file: a job row as a record and back, saving, restoring, forgetting, the cache.

The panel's job list (WindowManager properties, emptied by a file load) is a view of the job file
(``core/jobfile.py``). It is rebuilt from it when a file is loaded, on Connect and at start-up.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import bpy

from ..blender import candidates, preview_object
from ..blender.paths import cache_dirs, job_file, preview_path
from ..blender.preferences import prefs
from ..blender.previews import PREVIEW_STAGES, preview_image
from ..blender.properties import IMPORT_OPTION_NAMES, state
from ..core import jobfile
from .state import current


def record(job) -> dict:
    """A job row as a job-file record (everything needed to show, continue, import and recall it)."""
    return {
        "name": job.name, "state": job.state, "message": job.message, "last_seq": job.last_seq,
        "location": list(job.location), "collection": job.collection, "preset": job.preset, "seed": job.seed,
        "steps": job.steps, "input_label": job.input_label, "input_path": job.input_path,
        "result_path": job.result_path, "result_size": job.result_size, "object_name": job.object_name,
        "texture_target": job.texture_target,
        "import": {k: getattr(job, k) for k in IMPORT_OPTION_NAMES},
        "stages": [{"stage": s.stage, "step": s.step, "total": s.total, "done": s.done} for s in job.stages],
        "previews": {stage: preview_path(job.job_id, stage) for stage, field in PREVIEW_STAGES.items()
                     if getattr(job, field)},
        **candidates.record(job),
    }


def save_jobs(context=None, wait: bool = False) -> None:
    """Write the rows marked as changed (every row with ``wait``, or when a change named no job) into the job
    file; records of jobs not in the list are kept.

    The records are gathered here; the file is written by the job file's own thread, so a slow disk never
    holds up Blender, and only changed rows are read and copied, so 500 finished jobs in the list cost
    nothing. ``wait`` writes before returning (add-on disabled, another file about to load).
    """
    s = current()
    jf = job_file()
    every = wait or s.dirty_all
    changes = {job.job_id: record(job) for job in state(context).jobs if every or job.job_id in s.dirty_jobs}
    if changes or wait:
        jf.merge_soon(changes)
    if wait:
        jf.flush()
    s.dirty, s.dirty_all, s.last_save = False, False, time.monotonic()
    s.dirty_jobs.clear()


def mark(job=None, now: bool = False) -> None:
    """Note that ``job``'s row (every row when None) is ahead of the job file; ``now`` writes it at once
    (state changes), else the tick writes within :data:`state.SAVE_EVERY_S`."""
    s = current()
    s.dirty = True
    if job is None:
        s.dirty_all = True
    else:
        s.dirty_jobs.add(job.job_id)
    if now:
        save_jobs()


def fill(job, job_id: str, rec: dict) -> None:
    """A job row from its job-file record."""
    job.job_id = job_id
    job.name = str(rec.get("name") or f"MPOD123_{job_id[:8]}")
    job.state = str(rec.get("state", "queued"))
    job.message = str(rec.get("message", ""))
    job.last_seq = int(rec.get("last_seq", 0))
    job.location = tuple(rec.get("location") or (0.0, 0.0, 0.0))
    job.collection = str(rec.get("collection") or "Generated")
    job.preset = str(rec.get("preset", ""))
    job.seed = int(rec.get("seed", 0))
    job.steps = int(rec.get("steps", 0))
    job.input_label = str(rec.get("input_label", ""))
    job.input_path = str(rec.get("input_path", ""))
    job.result_path = str(rec.get("result_path", ""))
    job.result_size = int(rec.get("result_size", 0))
    job.object_name = str(rec.get("object_name", ""))
    candidates.fill(job, rec)
    job.texture_target = str(rec.get("texture_target", ""))
    for k, v in (rec.get("import") or {}).items():
        if k in IMPORT_OPTION_NAMES:
            try:
                setattr(job, k, v)
            except (TypeError, ValueError):
                pass
    job.stages.clear()
    for s in rec.get("stages") or ():
        row = job.stages.add()
        row.stage, row.step, row.total, row.done = str(s["stage"]), int(s["step"]), int(s["total"]), bool(s["done"])
    for stage, path in (rec.get("previews") or {}).items():
        if stage in PREVIEW_STAGES and os.path.isfile(path):
            setattr(job, PREVIEW_STAGES[stage], preview_image(job_id, stage).name)


def restore_jobs(context=None) -> int:
    """Put every job of the job file that is missing from the list back into it; returns how many.

    Preview objects of jobs that are no longer running (a file saved mid-job and reopened later) go."""
    context = context or bpy.context
    current().restore_pending = False
    st = state(context)
    known = {j.job_id for j in st.jobs}
    added = 0
    records = job_file().peek()  # read only: the rows are filled from it, nothing in it changes
    missing = [(job_id, rec) for job_id, rec in records.items() if job_id not in known and not rec.get("hidden")]
    for job_id, rec in sorted(missing, key=lambda kv: kv[1].get("created", 0)):
        fill(st.jobs.add(), job_id, rec)
        added += 1
    if added:
        st.active_job = len(st.jobs) - 1
    preview_object.prune(j.job_id for j in st.jobs if j.state in jobfile.UNFINISHED + ("done",))
    return added


def forget_jobs(context, job_ids) -> None:
    """Take jobs off the list for good (their records stay, marked hidden, so they are not imported again)."""
    st = state(context)
    ids = set(job_ids)
    for i in range(len(st.jobs) - 1, -1, -1):
        if st.jobs[i].job_id in ids:
            st.jobs.remove(i)
    st.active_job = max(0, min(st.active_job, len(st.jobs) - 1))
    jf = job_file()
    known = jf.peek()
    for job_id in ids:
        preview_object.remove(job_id)
    jf.merge_soon({job_id: {"hidden": True} for job_id in ids if job_id in known})


def prune_cache(context=None) -> list[Path]:
    """Apply the cache limits of the preferences (never to an unfinished job's files)."""
    p = prefs(context)
    limits = jobfile.CacheLimits(max_bytes=int(p.cache_limit_mb) << 20, max_age_s=float(p.cache_max_days) * 86400)
    return jobfile.prune_cache(cache_dirs(), job_file().peek(), limits)
