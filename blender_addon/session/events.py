"""What comes back from the network thread, applied to Blender data on the main thread: the calls'
outcomes (hello, submit, cancel, resume, fetch, list) and the jobs' events (progress, previews, the end)."""

from __future__ import annotations

import os
import time

from ..blender import candidates, preview_object
from ..blender.context import report
from ..blender.paths import preview_path
from ..blender.preferences import prefs
from ..blender.previews import PREVIEW_STAGES, later_previews, preview_image
from ..blender.properties import ACTIVE_STATES, find_job, row_for, rows, state
from ..core.client import Message
from ..core.errors import AddonError
from ..core.network import Outcome
from .connection import local_log_tail
from .jobs import continue_jobs, download, fail, import_now, on_job_list, send_unsent
from .records import mark, restore_jobs
from .state import current


def on_connected(context, info: dict) -> None:
    st = state(context)
    st.connection, st.server_message = "connected", ""
    st.server_name = str(info.get("server", ""))
    st.server_version = str(info.get("version") or info.get("server_version") or ", ".join(info.get("versions", [])))
    gpu = info.get("gpu") or info.get("gpus") or info.get("device") or ""
    st.server_gpu = ", ".join(map(str, gpu)) if isinstance(gpu, (list, tuple)) else str(gpu or "not reported")
    if isinstance(info.get("summary"), str) and info["summary"].startswith("GPU: "):
        st.server_gpu = info["summary"][5:300]  # the panel reads "GPU: <name>, models: ready | will download N GB"
    if isinstance(info.get("max_image_bytes"), int):
        current().max_image_bytes = info["max_image_bytes"]
    restore_jobs(context)
    continue_jobs(context)


def stage_row(job, name: str):
    return row_for(job.stages, "stage", name)


def apply_event(context, msg: Message, preview: bool = True, by_id: dict | None = None) -> None:
    """Apply one job event to the panel state (and to Blender images); ``preview=False`` skips its image.
    ``by_id``: the rows by job id (:func:`rows`), when many events are applied at once."""
    job = by_id.get(msg.job_id or "") if by_id is not None else find_job(context, msg.job_id or "")
    c = msg.content
    kind = c.get("kind")
    if job is None:
        return
    if msg.seq is not None:
        job.last_seq = max(job.last_seq, msg.seq)
    if kind in ("progress", "preview", "preview_mesh", "stage_done") and job.state in ("queued", "sending"):
        job.state = "running"
        mark(job, now=True)
    if kind == "progress":
        s = stage_row(job, str(c.get("stage", "?")))
        s.step, s.total = int(c.get("step", 0)), int(c.get("total", 0))
        eta = c.get("eta_s")
        s.eta_s = float(eta) if isinstance(eta, (int, float)) else -1.0
        mark(job)
    elif kind == "preview" and msg.buffers:
        stage = str(c.get("stage", ""))
        field = PREVIEW_STAGES.get(stage)
        if candidates.on_preview(context, job, stage, msg.buffers[0], preview):  # a candidate image (Text mode)
            mark(job)
        if field and preview:
            written = c.get("preview_path") == preview_path(job.job_id, stage)
            image = preview_image(job.job_id, stage, None if written else msg.buffers[0])
            setattr(job, field, image.name)
            mark(job)
    elif kind == "preview_mesh" and msg.buffers:
        if preview and job.state in ACTIVE_STATES and prefs(context).show_mesh_previews:
            preview_object.show(context, job, msg.buffers[0])
    elif kind == "stage_done":
        s = stage_row(job, str(c.get("stage", "?")))
        s.done = True
        s.step = s.total = max(s.total, int(c.get("steps", s.total) or 0))
        s.eta_s = 0.0
        mark(job)
    elif kind == "log":
        job.message = str(c.get("text", "")).strip().splitlines()[-1][:500] if c.get("text") else job.message
        candidates.on_log(context, job, c)
    elif kind == "failed":
        job.state = "failed"
        preview_object.remove(job.job_id)
        fail(context, f"MPOD123 job for {job.name} failed: {c.get('ename', 'Error')}: {c.get('evalue', '')}", job)
        mark(job, now=True)
    elif kind == "cancelled":
        job.state, job.message, job.activity = "cancelled", str(c.get("reason", "cancelled")), ""
        preview_object.remove(job.job_id)
        report("INFO", f"MPOD123 job for {job.name} was cancelled")
        mark(job, now=True)
    elif kind == "done":
        job.result_size = int(c.get("size", 0) or 0)
        job.message = f"result ready ({job.result_size // 1024} KiB)"
        job.state = "done"
        if prefs(context).auto_import:
            download(context, job)
        mark(job, now=True)


def on_submit(context, job, out: Outcome) -> None:
    current().sending.discard(job.job_id)
    if out.kind == "reply":
        if job.state == "sending":
            job.state = "queued"
    elif out.timeout:  # no answer: kept, and sent again (idempotent by its id) on the next Connect
        job.state = "unsent"
        fail(context, f"{job.name} was not sent: {out.error}. It is kept and sent again on the next Connect", job)
    else:  # the backend refused it: sending it again would fail again, so it ends here
        job.state = "failed"
        preview_object.remove(job.job_id)
        try:
            os.remove(job.input_path)
        except OSError:
            pass
        fail(context, f"the backend refused {job.name}: {out.error}", job)
    mark(job, now=True)


def on_outcome(context, out: Outcome) -> None:
    s = current()
    st = state(context)
    if out.kind == "events":
        s.pending.extend(out.value)
        return
    if out.kind == "notice":
        report("WARNING" if "lost" in out.value or "refused" in out.value else "INFO", f"MPOD123: {out.value}")
        if out.value.startswith("reconnected"):  # an upload that got no answer goes again (idempotent by its id)
            send_unsent(context)
        return
    if out.op in ("hello", "hello_until") and out.tag == "connect":
        s.connecting = False
        if out.kind == "reply":
            on_connected(context, out.value)
            report("INFO", f"MPOD123: connected to {st.server_name or 'the backend'}")
        else:
            text = out.error
            if out.op == "hello_until":
                text += f"; its log: {local_log_tail()}"
            st.connection = "lost" if out.timeout else "refused"
            st.server_message = text
            fail(context, text)
        return
    if out.op == "list_jobs" and isinstance(out.tag, tuple):
        if out.kind == "reply":
            on_job_list(context, out.value, out.tag[1])
        else:
            fail(context, f"cannot list jobs: {out.error}")
        return
    job = find_job(context, str(out.tag)) if isinstance(out.tag, str) else None
    if job is None:
        return
    job.activity = ""
    if out.op == "submit":
        on_submit(context, job, out)
    elif out.op == "cancel":
        if out.kind == "error":
            fail(context, f"cancel failed: {out.error}", job)
        elif out.value == "cancelled":
            job.state, job.message = "cancelled", "cancelled before it started"
        elif out.value == "running":
            job.state, job.message = "cancelling", "stopping after the current step"
        mark(job, now=True)
    elif out.op == "resume" and out.kind == "error":
        if out.timeout:
            job.message = f"waiting for the backend: {out.error}"
        else:
            job.state = "failed"
            fail(context, f"cannot continue {job.name}: {out.error}", job)
            mark(job, now=True)
    elif out.op == "fetch":
        if out.kind == "reply":
            job.result_path = str(out.value)
            s.imports.append(job.job_id)
        else:
            job.state = "done"
            fail(context, f"downloading the result of {job.name} failed: {out.error}", job)
            mark(job, now=True)


def apply_pending(context, budget_s: float | None, max_events: int | None) -> int:
    s = current()
    t0 = time.perf_counter()
    batch = list(s.pending)
    skip = later_previews(batch) | preview_object.superseded(batch)
    by_id = rows(context) if batch else {}  # one scan of the list per tick, not one per event
    applied = 0
    for i, msg in enumerate(batch):
        s.pending.popleft()
        if msg.content.get("kind") == "preview" and i not in skip:
            s.last_step["previews"] = s.last_step.get("previews", 0) + 1
        try:
            apply_event(context, msg, preview=i not in skip, by_id=by_id)
        except Exception as exc:  # noqa: BLE001  one bad event must not stop the stream
            report("ERROR", f"MPOD123: could not apply a {msg.content.get('kind')} event: {exc}")
        applied += 1
        if max_events is not None and applied >= max_events:
            break
        if budget_s is not None and time.perf_counter() - t0 > budget_s:
            break
    return applied


def import_one(context) -> bool:
    """Import the next downloaded result, if any (one per tick); True when one was imported or failed."""
    s = current()
    while s.imports:
        job = find_job(context, s.imports.popleft())
        if job is None:
            continue
        try:
            import_now(context, job)
        except AddonError as exc:
            job.state = "done"
            fail(context, str(exc), job)
            mark(job, now=True)
        return True
    return False
