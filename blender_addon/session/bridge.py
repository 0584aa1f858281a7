"""The one place where backend events change Blender data.

Threads: the network work (connect, submit, cancel, resume, download) runs on
the :class:`client.NetworkThread`, which owns the ZeroMQ sockets. Blender's
main thread never waits on the network: operators queue a call and return,
and the timer callback (:func:`tick`) collects what the thread produced and
applies it within a time budget (:data:`TICK_BUDGET_S`), so Blender stays
responsive whatever the backend does. Nothing but this module's main-thread
code touches bpy. Timers never fire in background mode: scripts, batch mode
and tests call :func:`tick` (or :func:`wait`) themselves.

Jobs: the panel's job list is a view of the job file (:mod:`jobfile`). It is
rebuilt from it when a file is loaded (``load_post``), on Connect and at
start-up, and every unfinished job then continues by itself: an unsent job
is submitted again (idempotent by its id), a queued or running one resumes
its event stream from the last event seen, a finished one is downloaded and
imported where the artist asked.

Imports: a result is imported on the main thread in a tick of its own (the
only tick allowed to take long), as one undo step, without changing the
artist's mode or, outside Object mode, the selection.
"""

from __future__ import annotations

import atexit
import collections
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import bpy

from ..blender import importer, preview_object, text_input
from ..core import jobfile
from ..core.client import FINAL_KINDS, Message, NetworkThread, Outcome, is_loopback, parse_key
from ..blender.preferences import prefs
from ..blender.properties import ACTIVE_STATES, IMPORT_OPTION_NAMES, find_job, state

PREVIEW_STAGES = {"matte": "preview_matte", "outline": "preview_outline", "detail": "preview_detail"}
"""Preview stages in events -> the job field holding the Blender image's name. The matte comes first."""
IDLE_INTERVAL_S = 1.0
BUSY_INTERVAL_S = 0.05
TICK_BUDGET_S = 0.008
"""Main-thread time one tick may spend applying events (an import tick does only the import)."""
SAVE_EVERY_S = 2.0
"""The job file is written at every state change and at most this often for progress."""


class BridgeError(RuntimeError):
    """Something the user has to fix; the message says what."""


_net: NetworkThread | None = None
_net_config: tuple | None = None
_pending: collections.deque[Message] = collections.deque()
_imports: collections.deque[str] = collections.deque()
_sending: set[str] = set()
"""Jobs whose submit is queued or running on the network thread (not to be sent twice)."""
_connecting = False
_restore_pending = True
_dirty = False
_last_save = 0.0
_local: subprocess.Popen | None = None
_local_log = None
last_step: dict = {}
"""What the last :func:`step` did (outcomes by call, events applied, an import, a save), for benchmarks."""


# ------------------------------------------------------------------ folders
def _package() -> str:
    return __package__.rpartition(".")[0] or "mpod123"


def user_dir(sub: str = "") -> Path:
    """A folder of the extension's user data, or of the temp folder when not installed as an extension."""
    try:
        return Path(bpy.utils.extension_path_user(_package(), path=sub, create=True))
    except (ValueError, RuntimeError, TypeError):
        path = Path(tempfile.gettempdir()) / "mpod123-blender" / sub
        path.mkdir(parents=True, exist_ok=True)
        return path


def results_dir() -> Path:
    return user_dir("results")


def cache_dirs() -> list[Path]:
    return [user_dir("results"), user_dir("previews"), user_dir("inputs")]


def job_file() -> jobfile.JobFile:
    return jobfile.JobFile.at(user_dir() / "jobs.json")


def owner_id() -> str:
    """This installation's identity on the backend (a file in the user folder, stable across launches)."""
    return jobfile.owner_id(user_dir())


# --------------------------------------------------------------- reporting
def report(level: str, text: str) -> None:
    """Tell the user: Blender's report (Info editor, status bar) and the console."""
    print(f"MPOD123 {level.lower()}: {text}")
    try:
        bpy.ops.mpod123.report(level=level, message=text[:1000])
    except (AttributeError, RuntimeError, TypeError):
        pass  # not registered (scripts) or no usable context


def _redraw() -> None:
    wm = getattr(bpy.context, "window_manager", None)
    for window in getattr(wm, "windows", ()):
        screen = window.screen
        for area in getattr(screen, "areas", ()):
            if area.type in {"VIEW_3D", "IMAGE_EDITOR"}:
                area.tag_redraw()


def _fail(context, text: str, job=None) -> None:
    """An error that came back through the tick: on the job, at the top of the panel and in the status bar."""
    if job is not None:
        job.message = text[:1000]
    state(context).last_error = text[:1000]
    report("ERROR", text)


# -------------------------------------------------------------- connection
def online_blocker(address: str) -> str:
    """Why the add-on may not use ``address`` now ('' when it may)."""
    if is_loopback(address) or bpy.app.online_access:
        return ""
    return (
        f"not connecting to {address}: Blender's Allow Online Access is off. Turn it on in "
        "Preferences > System > Network (or start Blender with --online-mode) to use a remote backend"
    )


def _keys(p) -> tuple[bytes | None, tuple[bytes, bytes] | None]:
    if not p.server_public_key.strip():
        return None, None
    try:
        server = parse_key(p.server_public_key, "server public key")
        pub = parse_key(p.client_public_key, "client public key")
        sec = parse_key(p.client_secret_key, "client secret key")
    except ValueError as exc:
        raise BridgeError(f"{exc}. Load the keys from the files `mpod123 keys init` made (Preferences > Add-ons > MPOD123)") from None
    return server, (pub, sec)


def network(context=None, create: bool = True) -> NetworkThread | None:
    """The network thread for the current preferences (a new one when they changed); checks them first."""
    global _net, _net_config, _connecting
    p = prefs(context)
    blocked = online_blocker(p.address)
    if blocked:
        raise BridgeError(blocked)
    if not p.address.startswith(("tcp://", "ipc://", "inproc://")):
        raise BridgeError(f"the server address {p.address!r} must look like tcp://HOST:PORT")
    server_key, client_keys = _keys(p)
    config = (p.address, server_key, client_keys, float(p.timeout_s), owner_id())
    if _net is not None and config == _net_config and _net.alive:
        return _net
    if not create:
        return None
    if _net is not None:
        _net.stop(0.5)
    _connecting = False
    _sending.clear()  # the old thread's queue is gone with it
    _net = NetworkThread(p.address, owner_id(), p.timeout_s, server_key, client_keys, preview_dir=user_dir("previews"))
    _net_config = config
    try:
        state(context).connection = "not connected"
    except AttributeError:
        pass
    return _net


def disconnect() -> None:
    global _net, _net_config, _connecting
    if _net is not None:
        _net.stop(1.0)
    _net, _net_config, _connecting = None, None, False
    _sending.clear()


def _port_open(address: str, timeout_s: float = 0.05) -> bool:
    """Whether something listens at a loopback tcp address (refused at once when nothing does)."""
    url = urlparse(address)
    try:
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 5555), timeout=timeout_s):
            return True
    except OSError:
        return False


def connect(context=None) -> None:
    """Start saying hello to the backend (starting the local one first if set up so); returns at once.

    The answer (or the error) arrives through :func:`tick`; then the job list is rebuilt from the job file
    and every unfinished job continues.
    """
    global _connecting
    context = context or bpy.context
    p = prefs(context)
    st = state(context)
    net = network(context)
    process = None
    if p.use_local_backend and is_loopback(p.address) and p.address.startswith("tcp://") and not local_running() \
            and not _port_open(p.address):
        start_local(context)
        process = _local
    if process is not None:
        net.call("hello_until", float(p.start_timeout_s), process, tag="connect")
        st.connection = "starting the local backend…"
    else:
        net.call("hello", tag="connect")
        st.connection = "connecting…"
    st.server_message = ""
    _connecting = True
    ensure_timer()


def _ensure_connected(context) -> NetworkThread:
    net = network(context)
    if not _connecting and state(context).connection != "connected":
        connect(context)
    return net


def _on_connected(context, info: dict) -> None:
    st = state(context)
    st.connection, st.server_message = "connected", ""
    st.server_name = str(info.get("server", ""))
    st.server_version = str(info.get("version") or info.get("server_version") or ", ".join(info.get("versions", [])))
    gpu = info.get("gpu") or info.get("gpus") or info.get("device") or ""
    st.server_gpu = ", ".join(map(str, gpu)) if isinstance(gpu, (list, tuple)) else str(gpu or "not reported")
    if isinstance(info.get("summary"), str) and info["summary"].startswith("GPU: "):
        st.server_gpu = info["summary"][5:300]  # the panel reads "GPU: <name>, models: ready | will download N GB"
    restore_jobs(context)
    _continue_jobs(context)


# ------------------------------------------------------------ local backend
def local_running() -> bool:
    return _local is not None and _local.poll() is None


def local_command(context=None) -> list[str]:
    """The argument list (never a shell string) that starts the local backend; see operators_backend."""
    from ..ui import operators_backend

    p = prefs(context)
    data = p.local_data or str(user_dir("backend"))
    return operators_backend.local_command(p, bpy.path.abspath(data))


def start_local(context=None) -> int:
    """Start the local backend command (address must be loopback); returns its pid. Does not wait for it."""
    global _local, _local_log
    p = prefs(context)
    if not is_loopback(p.address):
        raise BridgeError(f"a local backend only listens on this computer; {p.address} is not a loopback address")
    if local_running():
        return _local.pid
    from ..core.backend_env import EnvError, backend_environment, child_popen_options

    try:
        cmd = local_command(context)
    except EnvError as exc:
        raise BridgeError(f"cannot start the local backend: {exc}") from None
    log_path = user_dir("backend") / "backend.log"
    _local_log = open(log_path, "w")  # noqa: SIM115  stays open while the backend runs
    try:
        _local = subprocess.Popen(cmd, stdout=_local_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=backend_environment(), **child_popen_options())
    except OSError as exc:
        _local_log.close()
        raise BridgeError(
            f"cannot start the local backend ({exc}): click Install Backend in the add-on preferences (or Repair "
            f"it), or clear Local Command, or give the full path of your own mpod123 there "
            f"(e.g. /path/to/venv/bin/mpod123 serve --bind {{address}} --data {{data}})"
        ) from None
    state(context).local_pid = _local.pid
    return _local.pid


def stop_local(timeout_s: float = 5.0) -> None:
    """Stop the local backend this add-on started (SIGINT, then kill after ``timeout_s``)."""
    global _local, _local_log
    proc = _local
    if proc is None:
        return
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGINT if os.name != "nt" else signal.CTRL_BREAK_EVENT)
            proc.wait(timeout_s)
        except (subprocess.TimeoutExpired, OSError, ValueError):
            proc.kill()
            proc.wait(5)
    if _local_log is not None:
        _local_log.close()
    _local, _local_log = None, None
    try:
        state().local_pid = 0
    except (AttributeError, RuntimeError):
        pass


def local_log_tail(chars: int = 600) -> str:
    path = user_dir("backend") / "backend.log"
    try:
        return path.read_text(errors="replace")[-chars:].strip() or "(empty)"
    except OSError:
        return "(no log)"


atexit.register(stop_local)


# ------------------------------------------------------------ the job file
def _record(job) -> dict:
    """A job row as a job-file record (everything needed to show, continue, import and recall it)."""
    return {
        "name": job.name, "state": job.state, "message": job.message, "last_seq": job.last_seq,
        "location": list(job.location), "collection": job.collection, "preset": job.preset, "seed": job.seed,
        "steps": job.steps, "input_label": job.input_label, "input_path": job.input_path,
        "result_path": job.result_path, "result_size": job.result_size, "object_name": job.object_name,
        "texture_target": job.texture_target,
        "import": {k: getattr(job, k) for k in IMPORT_OPTION_NAMES},
        "stages": [{"stage": s.stage, "step": s.step, "total": s.total, "done": s.done} for s in job.stages],
        "previews": {stage: _preview_path(job.job_id, stage) for stage, field in PREVIEW_STAGES.items()
                     if getattr(job, field)},
        **text_input.record(job),
    }


def save_jobs(context=None, wait: bool = False) -> None:
    """Write every row into the job file (records of jobs not in the list are kept).

    The records are gathered here; the file is written by the job file's own thread, so a slow disk never
    holds up Blender. ``wait`` writes before returning (add-on disabled, another file about to load).
    """
    global _dirty, _last_save
    jf = job_file()
    records = jf.load_cached()
    for job in state(context).jobs:
        old = records.get(job.job_id, {})
        records[job.job_id] = {**old, "created": old.get("created", time.time()), **_record(job)}
    jf.save_soon(records)
    if wait:
        jf.flush()
    _dirty, _last_save = False, time.monotonic()


def _mark(job=None, now: bool = False) -> None:
    """Note that the job file is behind; ``now`` writes it at once (state changes)."""
    global _dirty
    _dirty = True
    if now:
        save_jobs()


def _fill(job, job_id: str, rec: dict) -> None:
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
    text_input.fill(job, rec)
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
    """Put every job of the job file that is missing from the list back into it; returns how many."""
    global _restore_pending
    context = context or bpy.context
    _restore_pending = False
    st = state(context)
    known = {j.job_id for j in st.jobs}
    added = 0
    for job_id, rec in sorted(job_file().load().items(), key=lambda kv: kv[1].get("created", 0)):
        if job_id in known or rec.get("hidden"):
            continue
        _fill(st.jobs.add(), job_id, rec)
        added += 1
    if added:
        st.active_job = len(st.jobs) - 1
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
    records = jf.load_cached()
    for job_id in ids:
        preview_object.remove(job_id)
        if job_id in records:
            records[job_id]["hidden"] = True
    jf.save_soon(records)


def _continue_jobs(context) -> None:
    """After a connect: resubmit unsent jobs, resume unfinished streams, download finished results."""
    net = _net
    if net is None:
        return
    for job in state(context).jobs:
        if job.state in ("sending", "unsent") and job.job_id not in _sending:
            _send(context, job)
        elif job.state in ("queued", "running", "cancelling"):
            net.call("resume", job.job_id, job.last_seq, tag=job.job_id)
        elif job.state == "downloading":
            _download(context, job)


def start_up() -> None:
    """At start-up and after a file load: rebuild the list and continue unfinished jobs (no click needed)."""
    context = bpy.context
    restore_jobs(context)
    prune_cache(context)
    if any(j.state in ACTIVE_STATES or j.state == "unsent" for j in state(context).jobs):
        try:
            _ensure_connected(context)
        except BridgeError as exc:
            _fail(context, str(exc))
    ensure_timer()


def prune_cache(context=None) -> list[Path]:
    """Apply the cache limits of the preferences (never to an unfinished job's files)."""
    p = prefs(context)
    limits = jobfile.CacheLimits(max_bytes=int(p.cache_limit_mb) << 20, max_age_s=float(p.cache_max_days) * 86400)
    return jobfile.prune_cache(cache_dirs(), job_file().load(), limits)


# ---------------------------------------------------------------------- jobs
def _store_input(job_id: str, image: bytes) -> str:
    kind = "png" if image[:8] == b"\x89PNG\r\n\x1a\n" else "jpg" if image[:2] == b"\xff\xd8" else "img"
    path = user_dir("inputs") / f"{job_id}.{kind}"
    path.write_bytes(image)
    return str(path)


def submit(context, image: bytes, name: str, options: dict, location=(0.0, 0.0, 0.0), *, collection: str = "Generated",
           import_options: dict | None = None, input_label: str = "", views: tuple | None = None,
           texture: tuple | None = None) -> str:
    """Track a new job and queue its upload; returns its id at once (the upload runs on the network thread)."""
    import uuid

    st = state(context)
    net = _ensure_connected(context)
    job_id = uuid.uuid4().hex
    job = st.jobs.add()
    job.job_id, job.name, job.state = job_id, name, "sending"
    job.location = tuple(location)
    job.collection = collection or "Generated"
    job.preset, job.seed, job.steps = str(options.get("preset", "")), int(options.get("seed", 0)), int(options.get("steps", 0))
    job.input_label = input_label
    text_input.fill_job(job, options)  # a prompt job, or an image drawn from one
    for k, v in (import_options or {}).items():
        setattr(job, k, v)
    job.input_path = _store_input(job_id, image)
    if views and views[0]:  # (frames, angles): kept beside the input copy, sent again the same way
        from ..blender import extra_views

        extra_views.store(user_dir("inputs"), job_id, *views)
    if texture is not None:  # Texture Selected Mesh: (object name, its GLB, camera or None); texture_mesh.py
        from ..blender import texture_mesh

        job.texture_target = texture[0]
        texture_mesh.save_inputs(job_id, texture[1], texture[2])
    st.active_job = len(st.jobs) - 1
    job_file().update(job_id, endpoint=net.endpoint, **_record(job))
    _send(context, job, image)
    ensure_timer()
    return job_id


def _job_options(job) -> dict:
    options = {"preset": job.preset, "seed": int(job.seed)}
    if job.steps > 0:
        options["steps"] = int(job.steps)
    if job.target_faces > 0:
        options["target_faces"] = int(job.target_faces)
    options.update(text_input.job_options(job))
    return options


def _send(context, job, image: bytes | None = None) -> None:
    if image is None:
        try:
            image = Path(job.input_path).read_bytes()
        except OSError:
            job.state = "failed"
            _fail(context, f"{job.name}: its input copy {job.input_path} is gone; generate it again", job)
            _mark(now=True)
            return
    job.state, job.activity = "sending", f"uploading {len(image) / 1e6:.1f} MB…"
    if job.texture_target:  # the photo, then the mesh (texture_mesh.py)
        from ..blender import texture_mesh

        if not texture_mesh.send(network(context), job, image, _job_options(job)):
            job.state = "failed"
            _fail(context, f"{job.name}: its mesh copy is gone; texture it again", job)
            _mark(now=True)
            return
    else:
        from ..blender import extra_views

        frames, angles = extra_views.load(user_dir("inputs"), job.job_id)
        options = {**_job_options(job), **({"views": angles} if angles else {})}
        network(context).call("submit", image, options, job.job_id, frames, tag=job.job_id)
    _sending.add(job.job_id)


def cancel(context, job_id: str) -> None:
    """Ask the backend to cancel (returns at once; the answer comes through the tick)."""
    job = find_job(context, job_id)
    if job is None:
        raise BridgeError(f"no job {job_id} in the list")
    if job.state in ("unsent",):
        job.state, job.message = "cancelled", "cancelled before it was sent"
        _mark(now=True)
        return
    network(context).call("cancel", job_id, tag=job_id)
    job.activity = "cancelling…"


def _stage(job, name: str):
    for s in job.stages:
        if s.stage == name:
            return s
    s = job.stages.add()
    s.stage = name
    return s


def _preview_path(job_id: str, stage: str) -> str:
    return str(user_dir("previews") / f"{job_id}-{stage}.png")


def preview_image(job_id: str, stage: str, png: bytes | None = None) -> bpy.types.Image:
    """The Blender image for (job, stage), reading the preview file (written now when ``png`` is given)."""
    path = _preview_path(job_id, stage)
    if png is not None:
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(png)
        os.replace(tmp, path)
    name = f"MPOD123 {stage} {job_id[:8]}"
    image = bpy.data.images.get(name)
    if image is None:
        image = bpy.data.images.load(path)
        image.name = name
    else:
        if bpy.path.abspath(image.filepath) != path:
            image.filepath = path
        image.reload()  # cheap: the pixels are read again when the image is next drawn
    return image


def _later_previews(batch) -> set[int]:
    """Indices of preview events that a later preview of the same job and stage in ``batch`` replaces."""
    seen, skip = set(), set()
    for i in range(len(batch) - 1, -1, -1):
        c = batch[i].content
        if c.get("kind") == "preview":
            key = (batch[i].job_id, c.get("stage"))
            if key in seen:
                skip.add(i)
            seen.add(key)
    return skip


def apply_event(context, msg: Message, preview: bool = True) -> None:
    """Apply one job event to the panel state (and to Blender images); ``preview=False`` skips its image."""
    job = find_job(context, msg.job_id or "")
    c = msg.content
    kind = c.get("kind")
    if job is None:
        return
    if msg.seq is not None:
        job.last_seq = max(job.last_seq, msg.seq)
    if kind in ("progress", "preview", "preview_mesh", "stage_done") and job.state in ("queued", "sending"):
        job.state = "running"
        _mark(now=True)
    if kind == "progress":
        s = _stage(job, str(c.get("stage", "?")))
        s.step, s.total = int(c.get("step", 0)), int(c.get("total", 0))
        eta = c.get("eta_s")
        s.eta_s = float(eta) if isinstance(eta, (int, float)) else -1.0
        _mark()
    elif kind == "preview" and msg.buffers:
        stage = str(c.get("stage", ""))
        field = PREVIEW_STAGES.get(stage)
        if text_input.on_preview(context, job, stage, msg.buffers[0], preview):  # a candidate image (Text mode)
            _mark()
        if field and preview:
            written = c.get("preview_path") == _preview_path(job.job_id, stage)
            image = preview_image(job.job_id, stage, None if written else msg.buffers[0])
            setattr(job, field, image.name)
            _mark()
    elif kind == "preview_mesh" and msg.buffers:
        if preview and job.state in ACTIVE_STATES:
            preview_object.show(context, job, msg.buffers[0])
    elif kind == "stage_done":
        s = _stage(job, str(c.get("stage", "?")))
        s.done = True
        s.step = s.total = max(s.total, int(c.get("steps", s.total) or 0))
        s.eta_s = 0.0
        _mark()
    elif kind == "log":
        job.message = str(c.get("text", "")).strip().splitlines()[-1][:500] if c.get("text") else job.message
        text_input.on_log(context, job, c)
    elif kind == "failed":
        job.state = "failed"
        preview_object.remove(job.job_id)
        _fail(context, f"MPOD123 job for {job.name} failed: {c.get('ename', 'Error')}: {c.get('evalue', '')}", job)
        _mark(now=True)
    elif kind == "cancelled":
        job.state, job.message, job.activity = "cancelled", str(c.get("reason", "cancelled")), ""
        preview_object.remove(job.job_id)
        report("INFO", f"MPOD123 job for {job.name} was cancelled")
        _mark(now=True)
    elif kind == "done":
        job.result_size = int(c.get("size", 0) or 0)
        job.message = f"result ready ({job.result_size // 1024} KiB)"
        job.state = "done"
        if prefs(context).auto_import:
            _download(context, job)
        _mark(now=True)


def _result_path(job) -> Path:
    return results_dir() / f"{job.job_id}.glb"


def _download(context, job) -> None:
    """Fetch the result on the network thread (if not here yet), then import it in a tick of its own."""
    if text_input.is_candidates(job):  # its candidates arrived as images; there is no mesh to import
        job.message = "candidates ready: pick one in the Input panel (Text)"
        return
    dest = _result_path(job)
    if dest.is_file():
        job.result_path = str(dest)
        if job.job_id not in _imports:
            _imports.append(job.job_id)
        return
    job.state, job.activity = "downloading", "downloading…"
    network(context).call("fetch", job.job_id, str(dest), tag=job.job_id)


def request_import(context, job) -> None:
    """Import (again) a finished job's result: at once when it is here, else after downloading it."""
    if job.state not in ("done", "imported", "downloading"):
        raise BridgeError(f"{job.name} has no result to import ({job.state})")
    _download(context, job)
    ensure_timer()


def import_options(job) -> importer.ImportOptions:
    return importer.ImportOptions(rest_on_ground=bool(job.rest_on_ground), target_height=float(job.target_height),
                                  shading=str(job.shading), clear_custom_normals=bool(job.clear_custom_normals))


def _window_override() -> dict:
    """A window (and a 3D View in it, if any) for operators run from a timer, whose context may have none."""
    if getattr(bpy.context, "window", None) is not None:
        return {}
    wm = bpy.context.window_manager
    for window in getattr(wm, "windows", ()):
        override = {"window": window, "screen": window.screen}
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                override["area"] = area
                override["region"] = next((r for r in area.regions if r.type == "WINDOW"), None)
                break
        return {k: v for k, v in override.items() if v is not None}
    return {}


def import_now(context, job) -> bpy.types.Object:
    """Import a downloaded result (main thread) as one undo step; raises BridgeError with the reason."""
    dest = _result_path(job)
    if job.texture_target:  # a texture job's result goes onto its object (texture_mesh.py)
        from ..blender import texture_mesh

        obj = texture_mesh.apply_result(bpy.context, job, dest)
        job.result_path = str(dest)
        _mark(now=True)
        report("INFO", f"MPOD123: {job.message}")
        return obj
    with bpy.context.temp_override(**_window_override()):
        try:
            obj = importer.import_glb(str(dest), job.name, tuple(job.location), job.collection or "Generated",
                                      import_options(job))
        except importer.ImportGLBError as exc:
            raise BridgeError(str(exc)) from None
        preview_object.remove(job.job_id)  # before the undo step, which then holds no preview
        try:
            bpy.ops.ed.undo_push(message=f"Import MPOD123 result {obj.name}")
        except RuntimeError:
            pass  # no undo stack (background scripts)
    job.result_path, job.object_name, job.state, job.activity = str(dest), obj.name, "imported", ""
    job.message = f"imported as {obj.name}"
    _mark(now=True)
    report("INFO", f"MPOD123: imported {obj.name}")
    return obj


def import_finished(context, location=(0.0, 0.0, 0.0)) -> None:
    """Import every finished job of this owner not imported yet (e.g. it ended while Blender was closed).

    Asks the backend on the network thread; each result goes where its job was asked for (the job file
    knows), or at ``location`` for a job this installation has no record of.
    """
    _ensure_connected(context).call("list_jobs", tag=("import_finished", tuple(location)))
    ensure_timer()


def _on_job_list(context, jobs: list[dict], location) -> None:
    st = state(context)
    records = job_file().load_cached()
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
            _fill(job, job_id, rec or {"name": f"MPOD123_{job_id[:8]}", "location": list(location)})
            if rec is None:
                p = prefs(context)
                for k in IMPORT_OPTION_NAMES:
                    setattr(job, k, getattr(p, k))
        if job.state in ("imported", "downloading"):
            continue
        job.state = "done"
        _download(context, job)
    _mark(now=True)


# ------------------------------------------------------------- outcomes
def _on_outcome(context, out: Outcome) -> None:
    global _connecting
    st = state(context)
    if out.kind == "events":
        _pending.extend(out.value)
        return
    if out.kind == "notice":
        report("WARNING" if "lost" in out.value or "refused" in out.value else "INFO", f"MPOD123: {out.value}")
        return
    if out.op in ("hello", "hello_until") and out.tag == "connect":
        _connecting = False
        if out.kind == "reply":
            _on_connected(context, out.value)
            report("INFO", f"MPOD123: connected to {st.server_name or 'the backend'}")
        else:
            text = out.error
            if out.op == "hello_until":
                text += f"; its log: {local_log_tail()}"
            st.connection = "lost" if out.timeout else "refused"
            st.server_message = text
            _fail(context, text)
        return
    if out.op == "list_jobs" and isinstance(out.tag, tuple):
        if out.kind == "reply":
            _on_job_list(context, out.value, out.tag[1])
        else:
            _fail(context, f"cannot list jobs: {out.error}")
        return
    job = find_job(context, str(out.tag)) if isinstance(out.tag, str) else None
    if job is None:
        return
    job.activity = ""
    if out.op == "submit":
        _sending.discard(job.job_id)
        if out.kind == "reply":
            if job.state == "sending":
                job.state = "queued"
        else:
            job.state = "unsent"
            _fail(context, f"{job.name} was not sent: {out.error}. It is kept and sent again on the next Connect", job)
        _mark(now=True)
    elif out.op == "cancel":
        if out.kind == "error":
            _fail(context, f"cancel failed: {out.error}", job)
        elif out.value == "cancelled":
            job.state, job.message = "cancelled", "cancelled before it started"
        elif out.value == "running":
            job.state, job.message = "cancelling", "stopping after the current step"
        _mark(now=True)
    elif out.op == "resume" and out.kind == "error":
        if out.timeout:
            job.message = f"waiting for the backend: {out.error}"
        else:
            job.state = "failed"
            _fail(context, f"cannot continue {job.name}: {out.error}", job)
            _mark(now=True)
    elif out.op == "fetch":
        if out.kind == "reply":
            job.result_path = str(out.value)
            _imports.append(job.job_id)
        else:
            job.state = "done"
            _fail(context, f"downloading the result of {job.name} failed: {out.error}", job)
            _mark(now=True)


# ------------------------------------------------------------- the tick
def _apply_pending(context, budget_s: float | None, max_events: int | None) -> int:
    t0 = time.perf_counter()
    batch = list(_pending)
    skip = _later_previews(batch) | preview_object.superseded(batch)
    applied = 0
    for i, msg in enumerate(batch):
        _pending.popleft()
        if msg.content.get("kind") == "preview" and i not in skip:
            last_step["previews"] = last_step.get("previews", 0) + 1
        try:
            apply_event(context, msg, preview=i not in skip)
        except Exception as exc:  # noqa: BLE001  one bad event must not stop the stream
            report("ERROR", f"MPOD123: could not apply a {msg.content.get('kind')} event: {exc}")
        applied += 1
        if max_events is not None and applied >= max_events:
            break
        if budget_s is not None and time.perf_counter() - t0 > budget_s:
            break
    return applied


def _import_one(context) -> bool:
    """Import the next downloaded result, if any (one per tick); True when one was imported or failed."""
    while _imports:
        job = find_job(context, _imports.popleft())
        if job is None:
            continue
        try:
            import_now(context, job)
        except BridgeError as exc:
            job.state = "done"
            _fail(context, str(exc), job)
            _mark(now=True)
        return True
    return False


def step(context=None, budget_s: float | None = TICK_BUDGET_S, max_events: int | None = None) -> int:
    """One tick's work: collect the network thread's outcomes, then either one import or events within
    ``budget_s``. Returns how many things changed (0: nothing happened)."""
    context = context or bpy.context
    last_step.clear()
    if _restore_pending:
        start_up()
        last_step["restored"] = True
    changed = 0
    if _net is not None:
        for out in _net.take():
            _on_outcome(context, out)
            changed += 1
            last_step[out.op or out.kind] = last_step.get(out.op or out.kind, 0) + 1
        st = state(context)
        if not _connecting and st.connection != _net.state and _net.state in ("connected", "lost", "refused"):
            st.connection, st.server_message = _net.state, _net.message
        for job in st.jobs:
            busy = _net.busy.get(job.job_id, "")
            if busy == "downloading" and job.result_size:
                part = _result_path(job).with_name(f"{job.job_id}.glb.part")
                done = part.stat().st_size if part.exists() else 0
                busy = f"downloading {100 * done // job.result_size} %"
            if busy and job.activity != busy + "…":
                job.activity = busy + "…"
    if _import_one(context):
        last_step["import"] = True
        return changed + 1
    cap = max_events if max_events is not None else int(prefs(context).events_per_tick)
    applied = _apply_pending(context, budget_s, cap)
    if applied:
        last_step["applied"] = applied
    changed += applied
    if _dirty and time.monotonic() - _last_save > SAVE_EVERY_S:
        save_jobs(context)
        last_step["saved"] = True
    return changed


def drain(context=None, max_events: int | None = None) -> int:
    """:func:`step` without a time budget (scripts); kept for callers of the earlier API."""
    return step(context, None, max_events)


def busy(context=None) -> bool:
    st = state(context)
    return bool(_pending or _imports or _connecting) or (_net is not None and _net.has_outcomes()) \
        or any(j.state in ACTIVE_STATES for j in st.jobs)


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
    raise BridgeError(f"job {job_id} is still {job.state if job else 'unknown'} after {timeout_s:.0f} s")


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
    except (BridgeError, ReferenceError, AttributeError) as exc:
        print(f"MPOD123 warning: update skipped: {exc}")
        return IDLE_INTERVAL_S
    if n:
        _redraw()
    return BUSY_INTERVAL_S if busy() else IDLE_INTERVAL_S


def ensure_timer() -> None:
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=BUSY_INTERVAL_S, persistent=True)


# ------------------------------------------------------------ life cycle
@bpy.app.handlers.persistent
def _on_load_pre(*_args) -> None:
    try:
        save_jobs(bpy.context, wait=True)
    except (AttributeError, RuntimeError, OSError):
        pass


@bpy.app.handlers.persistent
def _on_load_post(*_args) -> None:
    global _restore_pending
    _restore_pending = True
    try:
        start_up()
    except (AttributeError, RuntimeError, OSError) as exc:
        print(f"MPOD123 warning: could not restore the job list: {exc}")


def _start_up_timer() -> None:
    try:
        start_up()
    except (AttributeError, RuntimeError, OSError) as exc:
        print(f"MPOD123 warning: could not restore the job list: {exc}")
    return None


def _same_function(a, b) -> bool:
    return a is b or (getattr(a, "__module__", None) == b.__module__ and getattr(a, "__name__", None) == b.__name__)


def register() -> None:
    """At enable (and Blender start): handlers, and a first tick that rebuilds the job list."""
    global _restore_pending
    _restore_pending = True
    for handlers, fn in ((bpy.app.handlers.load_pre, _on_load_pre), (bpy.app.handlers.load_post, _on_load_post)):
        for h in [h for h in handlers if _same_function(h, fn)]:
            handlers.remove(h)
        handlers.append(fn)
    if not bpy.app.timers.is_registered(_start_up_timer):
        bpy.app.timers.register(_start_up_timer, first_interval=0.1, persistent=True)
    preview_object.register()
    ensure_timer()


def shutdown() -> None:
    """Save the job list, stop the timer and the network thread and a local backend we started (add-on disabled)."""
    try:
        save_jobs(bpy.context, wait=True)
    except (AttributeError, RuntimeError, OSError):
        pass
    for handlers, fn in ((bpy.app.handlers.load_pre, _on_load_pre), (bpy.app.handlers.load_post, _on_load_post)):
        for h in [h for h in handlers if _same_function(h, fn)]:  # also a reloaded module's older copy
            handlers.remove(h)
    preview_object.unregister()
    for fn in (tick, _start_up_timer):
        if bpy.app.timers.is_registered(fn):
            bpy.app.timers.unregister(fn)
    disconnect()
    _pending.clear()
    _imports.clear()
    stop_local()
