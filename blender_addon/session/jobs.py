"""Jobs: submit, send again, cancel, continue after a connect, download and import a result.

Every call returns at once: the upload, the download and the backend's answers run on the network thread
and come back through the tick (``events.py``). A result is imported on the main thread in a tick of its
own (the only tick allowed to take long), as one undo step, without changing the artist's mode or, outside
Object mode, the selection.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import bpy

from ..blender import candidates, extra_views, importer, preview_object, texture_target
from ..blender.context import report, window_override
from ..blender.paths import job_file, result_path, user_dir
from ..blender.preferences import prefs
from ..blender.properties import IMPORT_OPTION_NAMES, find_job, state
from ..core.errors import AddonError
from .connection import ensure_connected, network
from .records import fill, mark, record
from .state import current


def fail(context, text: str, job=None) -> None:
    """An error that came back through the tick: on the job, at the top of the panel and in the status bar."""
    if job is not None:
        job.message = text[:1000]
    state(context).last_error = text[:1000]
    report("ERROR", text)


def store_input(job_id: str, image: bytes) -> str:
    kind = "png" if image[:8] == b"\x89PNG\r\n\x1a\n" else "jpg" if image[:2] == b"\xff\xd8" else "img"
    path = user_dir("inputs") / f"{job_id}.{kind}"
    path.write_bytes(image)
    return str(path)


def submit(context, image: bytes, name: str, options: dict, location=(0.0, 0.0, 0.0), *, collection: str = "Generated",
           import_options: dict | None = None, input_label: str = "", views: tuple | None = None,
           texture: tuple | None = None) -> str:
    """Track a new job and queue its upload; returns its id at once (the upload runs on the network thread)."""
    st = state(context)
    net = ensure_connected(context)
    job_id = uuid.uuid4().hex
    job = st.jobs.add()
    job.job_id, job.name, job.state = job_id, name, "sending"
    job.location = tuple(location)
    job.collection = collection or "Generated"
    job.preset, job.seed, job.steps = str(options.get("preset", "")), int(options.get("seed", 0)), int(options.get("steps", 0))
    job.input_label = input_label
    candidates.fill_job(job, options)  # a prompt job, or an image drawn from one
    for k, v in (import_options or {}).items():
        setattr(job, k, v)
    job.input_path = store_input(job_id, image)
    if views and views[0]:  # (frames, angles): kept beside the input copy, sent again the same way
        extra_views.store(user_dir("inputs"), job_id, *views)
    if texture is not None:  # Texture Selected Mesh: (object name, its GLB, camera or None)
        job.texture_target = texture[0]
        texture_target.save_inputs(job_id, texture[1], texture[2])
    st.active_job = len(st.jobs) - 1
    job_file().merge_soon({job_id: {"endpoint": net.endpoint, **record(job)}})
    send(context, job, image)
    return job_id


def job_options(job) -> dict:
    options = {"preset": job.preset, "seed": int(job.seed)}
    if job.steps > 0:
        options["steps"] = int(job.steps)
    if job.target_faces > 0:
        options["target_faces"] = int(job.target_faces)
    options.update(candidates.job_options(job))
    return options


def send(context, job, image: bytes | None = None) -> None:
    if image is None:
        try:
            image = Path(job.input_path).read_bytes()
        except OSError:
            job.state = "failed"
            fail(context, f"{job.name}: its input copy {job.input_path} is gone; generate it again", job)
            mark(job, now=True)
            return
    job.state, job.activity = "sending", f"uploading {len(image) / 1e6:.1f} MB…"
    if job.texture_target:  # the photo, then the mesh
        if not texture_target.send(network(context), job, image, job_options(job)):
            job.state = "failed"
            fail(context, f"{job.name}: its mesh copy is gone; texture it again", job)
            mark(job, now=True)
            return
    else:
        frames, angles = extra_views.load(user_dir("inputs"), job.job_id)
        options = {**job_options(job), **({"views": angles} if angles else {})}
        network(context).call("submit", image, options, job.job_id, frames, tag=job.job_id)
    current().sending.add(job.job_id)


def cancel(context, job_id: str) -> None:
    """Ask the backend to cancel (returns at once; the answer comes through the tick)."""
    job = find_job(context, job_id)
    if job is None:
        raise AddonError(f"no job {job_id} in the list")
    if job.state in ("unsent",):
        job.state, job.message = "cancelled", "cancelled before it was sent"
        mark(job, now=True)
        return
    network(context).call("cancel", job_id, tag=job_id)
    job.activity = "cancelling…"


def continue_jobs(context) -> None:
    """After a connect: resubmit unsent jobs, resume unfinished streams, download finished results."""
    s = current()
    if s.net is None:
        return
    for job in state(context).jobs:
        if job.state in ("sending", "unsent") and job.job_id not in s.sending:
            send(context, job)
        elif job.state in ("queued", "running", "cancelling"):
            s.net.call("resume", job.job_id, job.last_seq, tag=job.job_id)
        elif job.state == "downloading":
            download(context, job)


def send_unsent(context) -> int:
    """Send again the jobs whose upload got no answer (the connection came back); returns how many."""
    s = current()
    unsent = [job for job in state(context).jobs if job.state == "unsent" and job.job_id not in s.sending]
    for job in unsent:
        send(context, job)
    return len(unsent)


def download(context, job) -> None:
    """Fetch the result on the network thread (if not here yet), then import it in a tick of its own."""
    if candidates.is_candidates(job):  # its candidates arrived as images; there is no mesh to import
        job.message = "candidates ready: pick one in the Input panel (Text)"
        return
    dest = result_path(job)
    if dest.is_file():
        job.result_path = str(dest)
        if job.job_id not in current().imports:
            current().imports.append(job.job_id)
        return
    job.state, job.activity = "downloading", "downloading…"
    network(context).call("fetch", job.job_id, str(dest), tag=job.job_id)


def request_import(context, job) -> None:
    """Import (again) a finished job's result: at once when it is here, else after downloading it."""
    if job.state not in ("done", "imported", "downloading"):
        raise AddonError(f"{job.name} has no result to import ({job.state})")
    download(context, job)


def import_options(job) -> importer.ImportOptions:
    return importer.ImportOptions(rest_on_ground=bool(job.rest_on_ground), target_height=float(job.target_height),
                                  shading=str(job.shading), clear_custom_normals=bool(job.clear_custom_normals))


def import_now(context, job) -> bpy.types.Object:
    """Import a downloaded result (main thread) as one undo step; raises AddonError with the reason."""
    dest = result_path(job)
    if job.texture_target:  # a texture job's result goes onto its object
        obj = texture_target.apply_result(bpy.context, job, dest)
        job.result_path = str(dest)
        mark(job, now=True)
        report("INFO", f"MPOD123: {job.message}")
        return obj
    with bpy.context.temp_override(**window_override()):
        try:
            obj = importer.import_glb(str(dest), job.name, tuple(job.location), job.collection or "Generated",
                                      import_options(job))
        except importer.ImportGLBError as exc:
            raise AddonError(str(exc)) from None
        preview_object.remove(job.job_id)  # before the undo step, which then holds no preview
        try:
            bpy.ops.ed.undo_push(message=f"Import MPOD123 result {obj.name}")
        except RuntimeError:
            pass  # no undo stack (background scripts)
    job.result_path, job.object_name, job.state, job.activity = str(dest), obj.name, "imported", ""
    job.message = f"imported as {obj.name}"
    mark(job, now=True)
    report("INFO", f"MPOD123: imported {obj.name}")
    return obj


def import_finished(context, location=(0.0, 0.0, 0.0)) -> None:
    """Import every finished job of this owner not imported yet (e.g. it ended while Blender was closed).

    Asks the backend on the network thread; each result goes where its job was asked for (the job file
    knows), or at ``location`` for a job this installation has no record of.
    """
    ensure_connected(context).call("list_jobs", tag=("import_finished", tuple(location)))


def on_job_list(context, jobs: list[dict], location) -> None:
    st = state(context)
    records = job_file().peek()
    for info in jobs:
        job_id = info["job_id"]
        if info.get("state") != "done":
            continue
        job = find_job(context, job_id)
        if job is None:
            rec = records.get(job_id)
            if rec is not None and rec.get("state") == "imported":
                continue
            job = st.jobs.add()
            fill(job, job_id, rec or {"name": f"MPOD123_{job_id[:8]}", "location": list(location)})
            if rec is None:
                p = prefs(context)
                for k in IMPORT_OPTION_NAMES:
                    setattr(job, k, getattr(p, k))
        if job.state in ("imported", "downloading"):
            continue
        job.state = "done"
        download(context, job)
    mark(now=True)
