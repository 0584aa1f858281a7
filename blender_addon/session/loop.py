"""The timer tick and the add-on's life cycle: the one place where the network thread's results reach Blender.

The timer callback (:func:`tick`) collects what the network thread produced and applies it within a time
budget (:data:`state.TICK_BUDGET_S`), so Blender stays responsive whatever the backend does. Timers never
fire in background mode: scripts, batch mode and tests call :func:`step` (or :func:`wait`) themselves.

Jobs continue by themselves after a file load (``load_post``), at enable and at start-up: an unsent job is
submitted again (idempotent by its id), a queued or running one resumes its event stream from the last
event seen, a finished one is downloaded and imported where the artist asked. A local backend the add-on
started that dies while jobs wait on it is started again.
"""

from __future__ import annotations

import time

import bpy

from ..blender import preferences, preview_object
from ..blender.context import redraw
from ..blender.paths import result_path, user_dir
from ..blender.preferences import prefs
from ..blender.properties import ACTIVE_STATES, find_job, state
from ..core.client import FINAL_KINDS
from ..core.errors import AddonError
from .connection import ensure_connected, restart_crashed_local
from .events import apply_pending, import_one, on_outcome
from .jobs import fail
from .records import prune_cache, restore_jobs, save_jobs
from .state import BUSY_INTERVAL_S, IDLE_INTERVAL_S, SAVE_EVERY_S, TICK_BUDGET_S, current, fresh

PREFERENCES_FILE = "preferences.json"
"""The preferences, kept in the user folder when the add-on is disabled, and given back when it is enabled
again (Blender drops an add-on's preferences when it is disabled)."""


def start_up() -> None:
    """At start-up and after a file load: rebuild the list and continue unfinished jobs (no click needed)."""
    context = bpy.context
    s = current()
    if not s.prefs_restored:  # once, after an enable: the file is used up
        s.prefs_restored = True
        kept = user_dir() / PREFERENCES_FILE
        preferences.restore(prefs(context), kept)
        kept.unlink(missing_ok=True)
    restore_jobs(context)
    prune_cache(context)
    if any(j.state in ACTIVE_STATES or j.state == "unsent" for j in state(context).jobs):
        try:
            ensure_connected(context)
        except AddonError as exc:
            fail(context, str(exc))
    ensure_timer()


def show_network_state(context) -> None:
    """The connection's state, and the network activity of the jobs the thread works for (only those rows
    are touched, so a long job list costs nothing here)."""
    s = current()
    st = state(context)
    if not s.connecting and st.connection != s.net.state and s.net.state in ("connected", "lost", "refused"):
        st.connection, st.server_message = s.net.state, s.net.message
    busy_now = dict(s.net.busy)
    for job_id in s.activity_shown - busy_now.keys():  # the thread is done with it: its words go
        job = find_job(context, job_id)
        if job is not None and job.state not in ACTIVE_STATES:
            job.activity = ""
    s.activity_shown = set(busy_now)
    for job_id, busy in busy_now.items():
        job = find_job(context, job_id)
        if job is None:
            continue
        if busy == "downloading" and job.result_size:
            part = result_path(job).with_name(f"{job.job_id}.glb.part")
            done = part.stat().st_size if part.exists() else 0
            busy = f"downloading {100 * done // job.result_size} %"
        if job.activity != busy + "…":
            job.activity = busy + "…"


def watch_local(context) -> None:
    """A local backend the add-on started that died: started again while jobs wait on it, else forgotten
    (so that Start Local is offered again)."""
    s = current()
    if not s.local.crashed():
        return
    if any(j.state in ACTIVE_STATES for j in state(context).jobs) and restart_crashed_local(context):
        s.last_step["restarted"] = True
        return
    s.local.stop()
    state(context).local_pid = 0


def step(context=None, budget_s: float | None = TICK_BUDGET_S, max_events: int | None = None) -> int:
    """One tick's work: collect the network thread's outcomes, then either one import or events within
    ``budget_s``. Returns how many things changed (0: nothing happened)."""
    context = context or bpy.context
    s = current()
    s.last_step.clear()
    if s.restore_pending:
        start_up()
        s.last_step["restored"] = True
    watch_local(context)
    changed = 0
    if s.net is not None:
        for out in s.net.take():
            on_outcome(context, out)
            changed += 1
            s.last_step[out.op or out.kind] = s.last_step.get(out.op or out.kind, 0) + 1
        if s.net is not None:
            show_network_state(context)
    if import_one(context):
        s.last_step["import"] = True
        return changed + 1
    cap = max_events if max_events is not None else int(prefs(context).events_per_tick)
    applied = apply_pending(context, budget_s, cap)
    if applied:
        s.last_step["applied"] = applied
    changed += applied
    if s.dirty and time.monotonic() - s.last_save > SAVE_EVERY_S:
        save_jobs(context)
        s.last_step["saved"] = True
    return changed


def drain(context=None, max_events: int | None = None) -> int:
    """:func:`step` without a time budget (scripts)."""
    return step(context, None, max_events)


def busy(context=None) -> bool:
    s = current()
    if s.pending or s.imports or s.connecting or (s.net is not None and s.net.has_outcomes()):
        return True
    return any(j.state in ACTIVE_STATES for j in state(context).jobs)


def wait(context, job_id: str, until=FINAL_KINDS + ("imported",), timeout_s: float = 120.0) -> str:
    """Tick until the job reaches a state in ``until`` (for scripts and background mode); returns it."""
    deadline = time.monotonic() + timeout_s
    context = context or bpy.context
    while time.monotonic() < deadline:
        n = step(context, budget_s=None)
        job = find_job(context, job_id)
        if job is not None and job.state in until:
            return job.state
        if not n:
            time.sleep(0.02)
    job = find_job(context, job_id)
    raise AddonError(f"job {job_id} is still {job.state if job else 'unknown'} after {timeout_s:.0f} s")


def settle(context, done, timeout_s: float = 30.0) -> bool:
    """Tick until ``done()`` is true (for scripts and tests); returns whether it became true in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        n = step(context or bpy.context, budget_s=None)
        if done():
            return True
        if not n:
            time.sleep(0.02)
    return bool(done())


def tick() -> float | None:
    """The timer callback: one step within the time budget, a redraw, and back soon while anything is going on."""
    try:
        n = step(bpy.context)
    except (AddonError, ReferenceError, AttributeError) as exc:
        print(f"MPOD123 warning: update skipped: {exc}")
        return IDLE_INTERVAL_S
    if n:
        redraw()
    return BUSY_INTERVAL_S if busy() else IDLE_INTERVAL_S


def ensure_timer() -> None:
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=BUSY_INTERVAL_S, persistent=True)


# ------------------------------------------------------------ life cycle
@bpy.app.handlers.persistent
def on_load_pre(*_args) -> None:
    try:
        save_jobs(bpy.context, wait=True)
    except (AttributeError, RuntimeError, OSError):
        pass


@bpy.app.handlers.persistent
def on_load_post(*_args) -> None:
    current().restore_pending = True
    try:
        start_up()
    except (AttributeError, RuntimeError, OSError) as exc:
        print(f"MPOD123 warning: could not restore the job list: {exc}")


def start_up_timer() -> None:
    try:
        start_up()
    except (AttributeError, RuntimeError, OSError) as exc:
        print(f"MPOD123 warning: could not restore the job list: {exc}")
    return None


def same_function(a, b) -> bool:
    return a is b or (getattr(a, "__module__", None) == b.__module__ and getattr(a, "__name__", None) == b.__name__)


HANDLERS = ((bpy.app.handlers.load_pre, on_load_pre), (bpy.app.handlers.load_post, on_load_post))


def register() -> None:
    """At enable (and Blender start): a fresh session, handlers, and a first tick that rebuilds the job list
    and gives back the preferences kept at the last disable."""
    fresh().prefs_restored = False
    for handlers, fn in HANDLERS:
        for h in [h for h in handlers if same_function(h, fn)]:
            handlers.remove(h)
        handlers.append(fn)
    if not bpy.app.timers.is_registered(start_up_timer):
        bpy.app.timers.register(start_up_timer, first_interval=0.1, persistent=True)
    preview_object.register()
    ensure_timer()


def shutdown() -> None:
    """Add-on disabled: save the job list and the preferences, remove the preview objects, stop the timer,
    the network thread and a local backend this session started."""
    try:
        save_jobs(bpy.context, wait=True)
    except (AttributeError, RuntimeError, OSError):
        pass
    try:
        preferences.save(prefs(), user_dir() / PREFERENCES_FILE)
    except (AttributeError, RuntimeError, OSError) as exc:
        print(f"MPOD123 warning: could not keep the preferences: {exc}")
    for handlers, fn in HANDLERS:
        for h in [h for h in handlers if same_function(h, fn)]:  # also a reloaded module's older copy
            handlers.remove(h)
    try:
        preview_object.remove_all()  # no "(generating)" ghosts left behind; a running job shows them again
    except (AttributeError, RuntimeError, ReferenceError):
        pass
    preview_object.unregister()
    for fn in (tick, start_up_timer):
        if bpy.app.timers.is_registered(fn):
            bpy.app.timers.unregister(fn)
    fresh()
