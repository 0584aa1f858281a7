"""The add-on's only mutable state: one :class:`Session` (the connection, jobs in flight, events, the tick's
bookkeeping, the local backend and the managed backend's install and check).

Everything else in the add-on is either plain functions of Blender data (``blender/``), plain Python
(``core/``) or drawing and operators (``ui/``). There is one session at a time, :func:`current`; the add-on
starts a fresh one when it is enabled and ends it when disabled, and tests start from :func:`fresh` instead of
clearing a module's internals.
"""

from __future__ import annotations

import atexit
import collections
import threading
from dataclasses import dataclass, field

from ..core.client import Message
from ..core.installer import Installer, Status
from ..core.local_backend import LocalBackend
from ..core.network import NetworkThread
from ..core.torch_build import TorchBuild

IDLE_INTERVAL_S = 1.0
BUSY_INTERVAL_S = 0.05
TICK_BUDGET_S = 0.008
"""Main-thread time one tick may spend applying events (an import tick does only the import)."""
SAVE_EVERY_S = 2.0
"""The job file is written at every state change and at most this often for progress."""


@dataclass
class Session:
    """What the add-on knows and holds between two ticks; nothing of it is saved in a .blend file."""

    net: NetworkThread | None = None
    """The network thread for the current preferences (a new one when the address or keys change)."""
    net_config: tuple | None = None
    pending: collections.deque[Message] = field(default_factory=collections.deque)
    """Job events taken from the network thread, applied a budget's worth per tick."""
    imports: collections.deque[str] = field(default_factory=collections.deque)
    """Jobs whose result is here and waits for an import tick of its own."""
    sending: set[str] = field(default_factory=set)
    """Jobs whose submit is queued or running on the network thread (not to be sent twice)."""
    connecting: bool = False
    restore_pending: bool = True
    """The job list must be rebuilt from the job file (after enable, a file load)."""
    dirty: bool = False
    dirty_all: bool = False
    """A change that named no job: the next save writes every row."""
    dirty_jobs: set[str] = field(default_factory=set)
    """Rows changed since the last save (only these are written)."""
    last_save: float = 0.0
    max_image_bytes: int | None = None
    """The connected backend's limit for one image (its hello reply); None before a hello."""
    activity_shown: set[str] = field(default_factory=set)
    """Jobs whose row shows what the network thread does for them (cleared when it is done)."""
    local: LocalBackend = field(default_factory=LocalBackend)
    last_step: dict = field(default_factory=dict)
    """What the last step did (outcomes by call, events applied, an import, a save), for benchmarks."""
    # the managed backend (Install Backend, Check Backend)
    installer: Installer | None = None
    install_status: Status | None = None
    check: dict | None = None
    check_thread: threading.Thread | None = None
    torch_build: TorchBuild | None = None
    prefs_restored: bool = True
    """False from an enable until the first update gives back the preferences kept at the last disable."""

    def end(self) -> None:
        """Stop the network thread and the local backend this session started."""
        if self.net is not None:
            self.net.stop(1.0)
        self.net, self.net_config, self.connecting = None, None, False
        self.sending.clear()
        self.pending.clear()
        self.imports.clear()
        if self.installer is not None:
            self.installer.cancel(reason="the add-on was disabled")
            self.installer = None
        self.local.stop()


_current = Session()


def current() -> Session:
    return _current


def fresh() -> Session:
    """End the current session and start a new, empty one (add-on enabled again; tests)."""
    global _current
    _current.end()
    _current = Session()
    return _current


def _stop_at_exit() -> None:
    _current.local.stop()


atexit.register(_stop_at_exit)
