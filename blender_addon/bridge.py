"""The one place where backend events change Blender data.

The connection (:class:`client.AddonClient`) knows nothing of bpy; this
module owns it, applies its events to the WindowManager state and to Blender
images, and imports results. It runs from a ``bpy.app.timers`` callback
(:func:`tick`) that drains the socket with NOBLOCK and applies at most
``events_per_tick`` events per call, so Blender stays responsive however fast
events arrive. Timers never fire in background mode: scripts, batch mode and
tests call :func:`drain` themselves.

No Python thread ever touches bpy: everything here runs on Blender's main
thread. Every socket wait is NOBLOCK or bounded by the request timeout.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import bpy

from . import importer
from .client import (
    FINAL_KINDS,
    AddonClient,
    BackendError,
    BackendTimeout,
    Message,
    is_loopback,
    parse_key,
)
from .preferences import prefs
from .properties import find_job, state

PREVIEW_STAGES = {"outline": "preview_outline", "detail": "preview_detail"}
"""Stage-1 and stage-2 previews: the stage name in events -> the job field holding the Blender image's name."""
IDLE_INTERVAL_S = 1.0
BUSY_INTERVAL_S = 0.1


class BridgeError(RuntimeError):
    """Something the user has to fix; the message says what."""


_client: AddonClient | None = None
_client_config: tuple | None = None
_pending: collections.deque[Message] = collections.deque()
_local: subprocess.Popen | None = None
_local_log = None


# ------------------------------------------------------------------ folders
def _package() -> str:
    return __package__ or "mpod123"


def user_dir(sub: str) -> Path:
    """A folder of the extension's user data, or of the temp folder when not installed as an extension."""
    try:
        return Path(bpy.utils.extension_path_user(_package(), path=sub, create=True))
    except (ValueError, RuntimeError, TypeError):
        path = Path(tempfile.gettempdir()) / "mpod123-blender" / sub
        path.mkdir(parents=True, exist_ok=True)
        return path


def results_dir() -> Path:
    return user_dir("results")


def _registry_path() -> Path:
    return results_dir() / "jobs.json"


def _registry() -> dict:
    try:
        return json.loads(_registry_path().read_text())
    except (OSError, ValueError):
        return {}


def _remember(job_id: str, **fields) -> None:
    data = _registry()
    data.setdefault(job_id, {}).update(fields)
    tmp = _registry_path().with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, _registry_path())


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


def get_client(context=None, create: bool = True) -> AddonClient | None:
    """The connection for the current preferences (a new one when they changed)."""
    global _client, _client_config
    p = prefs(context)
    blocked = online_blocker(p.address)
    if blocked:
        raise BridgeError(blocked)
    server_key, client_keys = _keys(p)
    config = (p.address, server_key, client_keys, float(p.timeout_s), p.session)
    if _client is not None and config == _client_config:
        return _client
    if not create:
        return None
    watched, seqs = set(), {}
    if _client is not None:
        watched, seqs = _client.watched, dict(_client.last_seq)
        _client.close()
    if not p.address.startswith(("tcp://", "ipc://", "inproc://")):
        raise BridgeError(f"the server address {p.address!r} must look like tcp://HOST:PORT")
    _client = AddonClient(p.address, p.session, p.timeout_s, server_key, client_keys)
    _client.last_seq.update(seqs)
    _client.watched |= watched
    _client_config = config
    return _client


def disconnect() -> None:
    global _client, _client_config
    if _client is not None:
        _client.close()
    _client, _client_config = None, None


def _port_open(address: str) -> bool:
    url = urlparse(address)
    try:
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 5555), timeout=0.3):
            return True
    except OSError:
        return False


def _update_server_status(context, info: dict | None = None) -> None:
    st = state(context)
    c = _client
    if c is None:
        st.connection = "not connected"
        return
    st.connection = c.state
    st.server_message = c.message
    if info is not None:
        st.server_name = str(info.get("server", ""))
        st.server_version = str(info.get("version") or info.get("server_version") or ", ".join(info.get("versions", [])))
        gpu = info.get("gpu") or info.get("gpus") or info.get("device") or ""
        st.server_gpu = ", ".join(map(str, gpu)) if isinstance(gpu, (list, tuple)) else str(gpu or "not reported")
        if isinstance(info.get("summary"), str) and info["summary"].startswith("GPU: "):
            st.server_gpu = info["summary"][5:300]  # the panel reads "GPU: <name>, models: ready | will download N GB"


def connect(context=None) -> dict:
    """Say hello to the backend (starting the local one first if set up so); returns its reply."""
    context = context or bpy.context
    p = prefs(context)
    st = state(context)
    started = False
    try:
        client = get_client(context)
        if p.use_local_backend and is_loopback(p.address) and p.address.startswith("tcp://") \
                and not _port_open(p.address) and not local_running():
            start_local(context)
            started = True
        if started:
            info = _hello_while_starting(client, p.start_timeout_s)
        else:
            info = client.hello()
    except (BridgeError, BackendError, BackendTimeout) as exc:
        st.connection = _client.state if _client is not None else "not connected"
        st.server_message = str(exc)
        raise BridgeError(str(exc)) from None
    _update_server_status(context, info)
    ensure_timer()
    return info


def _hello_while_starting(client: AddonClient, limit_s: float) -> dict:
    deadline = time.monotonic() + limit_s
    saved = client.client.timeout_s
    client.client.timeout_s = 1.0
    try:
        while True:
            if _local is not None and _local.poll() is not None:
                raise BridgeError(f"the local backend exited with code {_local.returncode}: {local_log_tail()}")
            try:
                return client.hello()
            except BackendTimeout:
                if time.monotonic() > deadline:
                    raise BridgeError(
                        f"the local backend did not answer within {limit_s:.0f} s; its log: {local_log_tail()}"
                    ) from None
    finally:
        client.client.timeout_s = saved


# ------------------------------------------------------------ local backend
def local_running() -> bool:
    return _local is not None and _local.poll() is None


def local_command(context=None) -> list[str]:
    """The argument list (never a shell string) that starts the local backend; see operators_backend."""
    from . import operators_backend

    p = prefs(context)
    data = p.local_data or str(user_dir("backend"))
    return operators_backend.local_command(p, bpy.path.abspath(data))


def start_local(context=None) -> int:
    """Start the local backend command (address must be loopback); returns its pid."""
    global _local, _local_log
    p = prefs(context)
    if not is_loopback(p.address):
        raise BridgeError(f"a local backend only listens on this computer; {p.address} is not a loopback address")
    if local_running():
        return _local.pid
    from .backend_env import EnvError, backend_environment, child_popen_options

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
            f"cannot start the local backend ({exc}): set Local Command in the add-on preferences to the full "
            f"path of mpod123 (e.g. /path/to/venv/bin/mpod123 serve --bind {{address}} --data {{data}})"
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


# ---------------------------------------------------------------------- jobs
def submit(context, image: bytes, name: str, options: dict, location=(0.0, 0.0, 0.0)) -> str:
    """Queue a job on the backend and track it in the panel; returns its id."""
    st = state(context)
    client = get_client(context)
    if client.state != "connected":
        connect(context)
    try:
        job_id = client.submit(image, options)
    except (BackendError, BackendTimeout) as exc:
        _update_server_status(context)
        raise BridgeError(f"submit failed: {exc}") from None
    job = st.jobs.add()
    job.job_id, job.name, job.state = job_id, name, "queued"
    job.location = tuple(location)
    st.active_job = len(st.jobs) - 1
    _remember(job_id, name=name, imported=False, endpoint=client.endpoint, location=list(location))
    ensure_timer()
    return job_id


def cancel(context, job_id: str) -> str:
    job = find_job(context, job_id)
    try:
        new_state = get_client(context).cancel(job_id)
    except (BackendError, BackendTimeout) as exc:
        raise BridgeError(f"cancel failed: {exc}") from None
    if job is not None:
        if new_state == "cancelled":
            job.state, job.message = "cancelled", "cancelled before it started"
            if _client is not None:
                _client.watched.discard(job_id)
        elif new_state == "running":
            job.state, job.message = "cancelling", "stopping after the current step"
    return new_state


def _stage(job, name: str):
    for s in job.stages:
        if s.stage == name:
            return s
    s = job.stages.add()
    s.stage = name
    return s


def preview_image(job_id: str, stage: str, png: bytes) -> bpy.types.Image:
    """Write a preview PNG into the Blender image for (job, stage), creating it if needed."""
    folder = user_dir("previews")
    path = folder / f"{job_id}-{stage}.png"
    path.write_bytes(png)
    name = f"MPOD123 {stage} {job_id[:8]}"
    image = bpy.data.images.get(name)
    if image is None:
        image = bpy.data.images.load(str(path))
        image.name = name
    else:
        image.filepath = str(path)
        image.reload()
    image.pack()  # pixels stay when the preview file is replaced or removed
    return image


def apply_event(context, msg: Message) -> None:
    """Apply one job event to the panel state (and to Blender images / the scene)."""
    job = find_job(context, msg.job_id or "")
    c = msg.content
    kind = c.get("kind")
    if job is None:
        return
    if msg.seq is not None:
        job.last_seq = max(job.last_seq, msg.seq)
    if kind in ("progress", "preview") and job.state in ("queued",):
        job.state = "running"
    if kind == "progress":
        s = _stage(job, str(c.get("stage", "?")))
        s.step, s.total = int(c.get("step", 0)), int(c.get("total", 0))
        eta = c.get("eta_s")
        s.eta_s = float(eta) if isinstance(eta, (int, float)) else -1.0
    elif kind == "preview" and msg.buffers:
        stage = str(c.get("stage", ""))
        image = preview_image(job.job_id, stage, msg.buffers[0])
        field = PREVIEW_STAGES.get(stage)
        if field:
            setattr(job, field, image.name)
    elif kind == "stage_done":
        s = _stage(job, str(c.get("stage", "?")))
        s.done = True
        s.step = s.total = max(s.total, int(c.get("steps", s.total) or 0))
        s.eta_s = 0.0
    elif kind == "log":
        job.message = str(c.get("text", "")).strip().splitlines()[-1][:500] if c.get("text") else job.message
    elif kind == "failed":
        job.state = "failed"
        job.message = f"{c.get('ename', 'Error')}: {c.get('evalue', '')}"
        state(context).last_error = f"{job.name}: {job.message}"
        report("ERROR", f"MPOD123 job for {job.name} failed: {job.message}")
    elif kind == "cancelled":
        job.state, job.message = "cancelled", str(c.get("reason", "cancelled"))
        report("INFO", f"MPOD123 job for {job.name} was cancelled")
    elif kind == "done":
        job.state = "done"
        job.message = f"result ready ({int(c.get('size', 0)) // 1024} KiB)"
        if prefs(context).auto_import:
            try:
                import_result(context, job)
            except BridgeError as exc:
                job.message = str(exc)
                state(context).last_error = str(exc)
                report("ERROR", str(exc))


def import_result(context, job) -> bpy.types.Object:
    """Download a finished job's GLB (if not yet here) and import it at the job's location."""
    client = get_client(context)
    dest = results_dir() / f"{job.job_id}.glb"
    try:
        if not dest.is_file():
            client.fetch(job.job_id, dest)
    except (BackendError, BackendTimeout) as exc:
        raise BridgeError(f"downloading the result of {job.name} failed: {exc}") from None
    try:
        obj = importer.import_glb(str(dest), job.name, tuple(job.location))
    except importer.ImportGLBError as exc:
        raise BridgeError(str(exc)) from None
    job.result_path, job.object_name, job.state = str(dest), obj.name, "imported"
    job.message = f"imported as {obj.name}"
    _remember(job.job_id, imported=True, object=obj.name)
    report("INFO", f"MPOD123: imported {obj.name}")
    return obj


def import_finished(context, location=(0.0, 0.0, 0.0)) -> list[bpy.types.Object]:
    """Import every finished job of this client that was not imported yet (e.g. it ended while Blender was closed)."""
    client = get_client(context)
    try:
        jobs = client.list_jobs()
    except (BackendError, BackendTimeout) as exc:
        raise BridgeError(f"cannot list jobs: {exc}") from None
    known = _registry()
    st = state(context)
    done = []
    for info in jobs:
        job_id = info["job_id"]
        if info.get("state") != "done" or known.get(job_id, {}).get("imported"):
            continue
        job = find_job(context, job_id)
        if job is not None and job.state == "imported":
            continue
        if job is None:
            job = st.jobs.add()
            job.job_id = job_id
            job.name = known.get(job_id, {}).get("name") or f"MPOD123_{job_id[:8]}"
            job.location = tuple(location)
            job.last_seq = int(info.get("last_seq", 0))
        job.state = "done"
        done.append(import_result(context, job))
    return done


# ------------------------------------------------------------- the drain
def drain(context=None, max_events: int | None = None) -> int:
    """Read what the backend sent (NOBLOCK) and apply at most ``max_events`` events; returns how many."""
    context = context or bpy.context
    if _client is None:
        return 0
    cap = int(max_events or prefs(context).events_per_tick)
    _pending.extend(_client.drain(cap))
    for note in _client.take_notices():
        report("WARNING" if "lost" in note or "refused" in note else "INFO", f"MPOD123: {note}")
    _update_server_status(context)
    applied = 0
    while _pending and applied < cap:
        msg = _pending.popleft()
        try:
            apply_event(context, msg)
        except Exception as exc:  # noqa: BLE001  one bad event must not stop the stream
            report("ERROR", f"MPOD123: could not apply a {msg.content.get('kind')} event: {exc}")
        applied += 1
    return applied


def busy(context=None) -> bool:
    st = state(context)
    return bool(_pending) or any(j.state in ("queued", "running", "cancelling") for j in st.jobs)


def wait(context, job_id: str, until=FINAL_KINDS + ("imported",), timeout_s: float = 120.0) -> str:
    """Drain until the job reaches a state in ``until`` (for scripts and background mode); returns it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        drain(context)
        job = find_job(context, job_id)
        if job is not None and job.state in until:
            return job.state
        if _client is not None and not _pending:
            _client.client.sock.poll(100)
    job = find_job(context, job_id)
    raise BridgeError(f"job {job_id} is still {job.state if job else 'unknown'} after {timeout_s:.0f} s")


def tick() -> float | None:
    """The timer callback: drain, redraw, come back soon while jobs run."""
    try:
        n = drain(bpy.context)
    except BridgeError:
        return IDLE_INTERVAL_S
    if n:
        _redraw()
    if _client is None:
        return None
    return BUSY_INTERVAL_S if busy() else IDLE_INTERVAL_S


def ensure_timer() -> None:
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=BUSY_INTERVAL_S, persistent=True)


def shutdown() -> None:
    """Stop the timer, close the connection and stop a local backend we started (add-on disabled)."""
    if bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)
    disconnect()
    _pending.clear()
    stop_local()
