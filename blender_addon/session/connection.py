"""The connection to the backend: the network thread for the preferences, Connect, and the local backend
the add-on starts (and starts again when it dies while jobs wait on it).

Threads: the network work runs on the :class:`core.network.NetworkThread`, which owns the ZeroMQ sockets.
Blender's main thread never waits on the network: it queues a call and returns, and the tick applies what
came back.
"""

from __future__ import annotations

import socket
from urllib.parse import urlparse

import bpy

from ..blender.paths import owner_id, user_dir
from ..blender.preferences import prefs
from ..blender.properties import state
from ..core.client import is_loopback, parse_key
from ..core.errors import AddonError, EnvError
from ..core.network import NetworkThread
from .backend import local_command as backend_command
from .state import current


def online_blocker(address: str) -> str:
    """Why the add-on may not use ``address`` now ('' when it may)."""
    if is_loopback(address) or bpy.app.online_access:
        return ""
    return (
        f"not connecting to {address}: Blender's Allow Online Access is off. Turn it on in "
        "Preferences > System > Network (or start Blender with --online-mode) to use a remote backend"
    )


def keys(p) -> tuple[bytes | None, tuple[bytes, bytes] | None]:
    if not p.server_public_key.strip():
        return None, None
    try:
        server = parse_key(p.server_public_key, "server public key")
        pub = parse_key(p.client_public_key, "client public key")
        sec = parse_key(p.client_secret_key, "client secret key")
    except ValueError as exc:
        raise AddonError(f"{exc}. Load the keys from the files `mpod123 keys init` made (Preferences > Add-ons > MPOD123)") from None
    return server, (pub, sec)


def network(context=None, create: bool = True) -> NetworkThread | None:
    """The network thread for the current preferences (a new one when they changed); checks them first."""
    s = current()
    p = prefs(context)
    blocked = online_blocker(p.address)
    if blocked:
        raise AddonError(blocked)
    if not p.address.startswith(("tcp://", "ipc://", "inproc://")):
        raise AddonError(f"the server address {p.address!r} must look like tcp://HOST:PORT")
    server_key, client_keys = keys(p)
    config = (p.address, server_key, client_keys, float(p.timeout_s), owner_id())
    if s.net is not None and config == s.net_config and s.net.alive:
        return s.net
    if not create:
        return None
    if s.net is not None:
        s.net.stop(0.5)
    s.connecting, s.max_image_bytes = False, None
    s.sending.clear()  # the old thread's queue is gone with it
    s.net = NetworkThread(p.address, owner_id(), p.timeout_s, server_key, client_keys, preview_dir=user_dir("previews"))
    s.net_config = config
    try:
        st = state(context)
        st.connection, st.server_name, st.server_version, st.server_gpu = "not connected", "", "", ""
    except AttributeError:
        pass
    return s.net


def config_changed(context=None) -> bool:
    """Whether the preferences now name another backend (address, keys, timeout) than the connected one."""
    s = current()
    if s.net is None:
        return False
    p = prefs(context)
    try:
        server_key, client_keys = keys(p)
    except AddonError:
        return True
    return (p.address, server_key, client_keys) != s.net_config[:3]


def disconnect() -> None:
    s = current()
    if s.net is not None:
        s.net.stop(1.0)
    s.net, s.net_config, s.connecting = None, None, False
    s.sending.clear()


def port_open(address: str, timeout_s: float = 0.05) -> bool:
    """Whether something listens at a loopback tcp address (refused at once when nothing does)."""
    url = urlparse(address)
    try:
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 5555), timeout=timeout_s):
            return True
    except OSError:
        return False


def connect(context=None) -> None:
    """Start saying hello to the backend (starting the local one first if set up so); returns at once.

    The answer (or the error) arrives through the tick; then the job list is rebuilt from the job file
    and every unfinished job continues.
    """
    s = current()
    context = context or bpy.context
    p = prefs(context)
    st = state(context)
    net = network(context)
    process = None
    if p.use_local_backend and is_loopback(p.address) and p.address.startswith("tcp://") and not local_running() \
            and not port_open(p.address):
        start_local(context)
        process = s.local.proc
    if process is not None:
        net.call("hello_until", float(p.start_timeout_s), process, tag="connect")
        st.connection = "starting the local backend…"
    else:
        net.call("hello", tag="connect")
        st.connection = "connecting…"
    st.server_message = ""
    s.connecting = True


def ensure_connected(context) -> NetworkThread:
    net = network(context)
    if not current().connecting and state(context).connection != "connected":
        connect(context)
    return net


# ------------------------------------------------------------ local backend
def local_running() -> bool:
    return current().local.running()


def local_command(context=None) -> list[str]:
    """The argument list (never a shell string) that starts the local backend."""
    p = prefs(context)
    data = p.local_data or str(user_dir("backend"))
    return backend_command(p, bpy.path.abspath(data))


def start_local(context=None) -> int:
    """Start the local backend command (address must be loopback); returns its pid. Does not wait for it."""
    s = current()
    p = prefs(context)
    if not is_loopback(p.address):
        raise AddonError(f"a local backend only listens on this computer; {p.address} is not a loopback address")
    if s.local.running():
        return s.local.pid
    try:
        cmd = local_command(context)
    except EnvError as exc:
        raise AddonError(f"cannot start the local backend: {exc}") from None
    pid = s.local.start(cmd, user_dir("backend") / "backend.log")
    state(context).local_pid = pid
    return pid


def restart_crashed_local(context) -> bool:
    """The local backend the add-on started died (killed, crashed): start it again and say hello, so the
    jobs waiting on it continue. Returns whether it was restarted."""
    s = current()
    if not s.local.crashed():
        return False
    st = state(context)
    code = s.local.proc.returncode
    try:
        pid = s.local.restart()
    except AddonError as exc:
        st.local_pid, st.connection, st.server_message = 0, "lost", str(exc)
        st.last_error = str(exc)
        return False
    st.local_pid = pid
    net = network(context)
    net.call("hello_until", float(prefs(context).start_timeout_s), s.local.proc, tag="connect")
    st.connection, st.server_message = "starting the local backend again…", f"it stopped (exit code {code})"
    s.connecting = True
    print(f"MPOD123: the local backend stopped (exit code {code}); started it again (pid {pid})")
    return True


def stop_local(timeout_s: float = 5.0) -> None:
    """Stop the local backend this add-on started (SIGTERM, then kill after ``timeout_s``); no restart."""
    current().local.stop(timeout_s)
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
