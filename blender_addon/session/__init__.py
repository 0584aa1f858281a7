"""The only mutable state: one :class:`state.Session` (the connection, jobs, events, the timer tick).

Its modules, each by task: ``state`` (the Session), ``backend`` (the managed backend's install and check),
``records`` (the job list and the job file), ``connection`` (the network thread, Connect, the local
backend), ``jobs`` (submit, cancel, download, import), ``events`` (what comes back), ``loop`` (the timer tick and
the life cycle). This package's namespace is their public functions (and where the add-on keeps its files), for
operators, scripts and tests.
"""

from __future__ import annotations

from ..blender.paths import job_file, owner_id, preview_path, result_path, results_dir, user_dir
from .connection import (
    config_changed,
    connect,
    disconnect,
    ensure_connected,
    local_command,
    local_log_tail,
    local_running,
    network,
    online_blocker,
    start_local,
    stop_local,
)
from .events import apply_event, on_outcome
from .jobs import cancel, import_finished, import_now, job_options, request_import, submit
from .records import forget_jobs, prune_cache, restore_jobs, save_jobs
from .state import Session, current, fresh
from .loop import busy, drain, ensure_timer, settle, shutdown, start_up, step, tick, wait

__all__ = [
    "Session", "apply_event", "job_file", "owner_id", "preview_path", "result_path", "results_dir", "user_dir", "busy", "cancel", "config_changed", "connect", "current", "disconnect", "drain",
    "ensure_connected", "ensure_timer", "forget_jobs", "fresh", "import_finished", "import_now", "job_options",
    "local_command", "local_log_tail", "local_running", "network", "on_outcome", "online_blocker", "prune_cache",
    "request_import", "restore_jobs", "save_jobs", "settle", "shutdown", "start_local", "start_up", "step",
    "stop_local", "submit", "tick", "wait",
]
