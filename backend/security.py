"""CURVE keys, the ZAP allow-list, the bind policy, and the local token.

* By default the backend binds to 127.0.0.1 only. Binding any other address
  needs CURVE keys and is refused without them: :func:`check_bind` before the
  bind (an endpoint with ``;``, which libzmq reads as *source;destination*, is
  refused outright), and :func:`check_bound` on the socket's ``LAST_ENDPOINT``
  after it, so that no spelling of an address gets past the rule.
* ``mpod123 keys init DIR`` makes the server's key pair; each client makes its
  own pair where it lives (``mpod123 keys client DIR --name NAME``) and gives the
  server only its public key (``mpod123 keys allow DIR NAME.key``). Layout::

      DIR/server.key          server public key (give it to clients)
      DIR/server.key_secret   server secret key (stays on the server)
      DIR/clients/NAME.key    allowed client public keys (the allow-list)

  Folders are made 0700 and secret files 0600 from the first byte (never
  written and then chmodded), whatever the umask. A running server reloads
  the allow-list on SIGHUP, so adding or revoking a key needs no restart.
* With keys, a ZAP authenticator admits only clients whose public key is in
  ``DIR/clients``; the server then takes a job's owner from the client's key,
  so a job is visible only to the key that submitted it.
* Without keys (loopback), the connection is CURVE too: on its first start the
  server makes its key pair and one local client pair in the user's runtime
  folder (:func:`ensure_local_keys`; where: :func:`backend.client.runtime_dir`),
  0700 with files 0600, and allows only that client key. Every process of that
  user reads the keys by itself and shares the jobs (owner ``local``); other
  users cannot read them, and no secret ever travels on the wire, so a squatter
  on the port while the server is down learns nothing (Jupyter's
  connection-file model, with keys in place of the HMAC).
* A runtime folder or key file that is a symbolic link, not the user's own, or
  open to others is refused with the fix (files are opened with ``O_NOFOLLOW``
  relative to the checked folder); an empty, short or mismatched secret is an
  error at start; missing parents are made 0700 whatever the umask.
* ``--data`` is made 0700 (an existing wider folder of the user's is narrowed,
  another user's is refused), and ``serve`` runs under umask 077, so the
  database, inputs, previews and results are 0600 (:func:`private_data_dir`).

A wrong server key fails silently in ZeroMQ (the handshake never completes),
so clients need their own timeout; :class:`backend.client.Client` raises a
message that names this cause.
"""

from __future__ import annotations

import datetime
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .protocol import (  # noqa: F401  (LOCAL_TRANSPORTS, is_loopback: part of this module's API)
    LOCAL_CLIENT_SECRET, LOCAL_SERVER_KEY, LOCAL_SERVER_SECRET, LOCAL_TRANSPORTS, LocalKeysError, is_loopback,
    open_private_dir, read_private_file, runtime_dir,
)
from .protocol import parse_key_text as _parse_key_text


def parse_key_text(text: str, where: str | Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    """:func:`backend.protocol.parse_key_text`, and a secret must match its public key."""
    public, secret = _parse_key_text(text, where, need_secret)
    if secret is not None:
        try:
            ok = zmq.curve_public(secret) == public
        except (zmq.ZMQError, ValueError):
            ok = False
        if not ok:
            raise LocalKeysError(f"{where}: its secret key does not match its public key; remove it and make keys again")
    return public, secret

log = logging.getLogger(__name__)
LOCAL_CLIENTS = "clients"
LOCAL_CLIENT_NAME = "local"


class SecurityError(RuntimeError):
    """A refused security setting; the message says how to set it up."""


_NO_KEYS = (
    "Create keys with `mpod123 keys init KEYS_DIR`, let each client make its key pair with "
    "`mpod123 keys client DIR --name NAME`, add its public key with `mpod123 keys allow KEYS_DIR NAME.key`, "
    "and start the server with --keys KEYS_DIR; or bind tcp://127.0.0.1 only."
)


def check_bind(address: str, keys_dir: str | Path | None) -> None:
    """Refuse a non-loopback bind without CURVE keys, and any endpoint with a source address."""
    if ";" in address:
        raise SecurityError(
            f"refusing to bind {address!r}: a ';' in a ZeroMQ endpoint makes the part before it a source "
            "address, so the socket would listen on the part after it; give a single address"
        )
    if is_loopback(address):
        return
    if keys_dir is None:
        raise SecurityError(f"refusing to listen on {address} without encryption and authentication. {_NO_KEYS}")


def check_bound(endpoint: str, keys_dir: str | Path | None) -> None:
    """The same rule on the address the socket really got (its LAST_ENDPOINT)."""
    if keys_dir is None and not is_loopback(endpoint):
        raise SecurityError(f"the socket ended up listening on {endpoint}, which is not loopback; closed it. {_NO_KEYS}")


# ------------------------------------------------------------------ files
def _make_parents(path: Path) -> None:
    """Missing parents of ``path``, each 0700 (``mkdir(parents=True)`` makes them 0777 less the
    umask, which is 0777 under umask 000)."""
    missing = []
    for parent in path.absolute().parents:
        if os.path.lexists(parent):
            break
        missing.append(parent)
    for parent in reversed(missing):
        try:
            os.mkdir(parent, 0o700)
        except FileExistsError:
            continue
        os.chmod(parent, 0o700)


def private_dir(path: str | Path, fix_existing: bool = True) -> Path:
    """A folder only its owner can enter (0700, whatever the umask; missing parents 0700 too).
    ``fix_existing=False`` leaves the mode of a folder that was already there alone."""
    path = Path(path)
    existed = path.is_dir()
    _make_parents(path)
    path.mkdir(mode=0o700, exist_ok=True)
    if fix_existing or not existed:
        os.chmod(path, 0o700)
    return path


def private_data_dir(path: str | Path) -> tuple[Path, bool]:
    """``serve --data``: made 0700; an existing folder of this user's with wider modes is narrowed
    (with what the service keeps in it: :data:`SERVICE_FILES`), one of another user's is refused.
    Returns (folder, whether it was narrowed)."""
    path = Path(path)
    if not path.exists():
        return private_dir(path), False
    st = path.stat()
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise SecurityError(f"the data folder {path} belongs to uid {st.st_uid}, not to you; "
                            "give --data a folder of your own")
    if not hasattr(os, "getuid") or not stat.S_IMODE(st.st_mode) & 0o077:
        return path, False
    os.chmod(path, 0o700)
    for name in SERVICE_FILES:  # what the service stored before under a wider umask (nothing else of the folder)
        top = path / name
        walk = [(str(path), [], [name])] if top.is_file() else os.walk(top) if top.is_dir() else []
        if top.is_dir():
            _narrow(str(top))
        for root, dirs, files in walk:
            for entry in dirs + files:
                _narrow(os.path.join(root, entry))
    return path, True


SERVICE_FILES = ("jobs.sqlite", "jobs.sqlite-wal", "jobs.sqlite-shm", "results", "jobs")
"""What ``serve`` keeps in ``--data``: narrowed when the folder was open to others."""


def _narrow(p: str) -> None:
    try:
        lst = os.lstat(p)
        if not stat.S_ISLNK(lst.st_mode) and lst.st_uid == os.getuid() and lst.st_mode & 0o077:
            os.chmod(p, stat.S_IMODE(lst.st_mode) & 0o700)
    except OSError:
        pass


def _write_new(path: Path, text: str, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (O_EXCL: never over an existing file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)  # the umask may have taken bits away; never adds any
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _cert_text(public: bytes, secret: bytes | None) -> str:
    kind = "Secret" if secret else "Public"
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    text = f"#   ****  Generated on {now} by mpod123  ****\n#   ZeroMQ CURVE {kind} Certificate\n"
    if secret:
        text += "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n"
    text += f'\nmetadata\ncurve\n    public-key = "{public.decode()}"\n'
    if secret:
        text += f'    secret-key = "{secret.decode()}"\n'
    return text


def _check_name(name: str) -> None:
    if not name or not name.replace("-", "").replace("_", "").isalnum() or not name.isascii():
        raise SecurityError(f"key name {name!r} must be letters, digits, '-' or '_'")


def write_key_pair(folder: str | Path, name: str) -> tuple[Path, Path]:
    """``folder/NAME.key`` (public, 0644) and ``folder/NAME.key_secret`` (0600) in a 0700 folder."""
    _check_name(name)
    folder = private_dir(folder)
    public_file, secret_file = folder / f"{name}.key", folder / f"{name}.key_secret"
    if public_file.exists() or secret_file.exists():
        raise SecurityError(f"a key named {name!r} already exists in {folder}")
    public, secret = zmq.curve_keypair()
    _write_new(secret_file, _cert_text(public, secret), 0o600)
    _write_new(public_file, _cert_text(public, None), 0o644)
    return public_file, secret_file


def init_server_keys(keys_dir: str | Path) -> dict[str, Path]:
    """The server's key pair (once) and its empty allow-list folder."""
    keys_dir = private_dir(keys_dir)
    private_dir(keys_dir / "clients")
    made: dict[str, Path] = {}
    if not (keys_dir / "server.key_secret").is_file():
        made["server_public"], made["server_secret"] = write_key_pair(keys_dir, "server")
    return made


def make_client_keys(folder: str | Path, name: str = "client") -> dict[str, Path]:
    """A client's own key pair, made where the client lives; only ``NAME.key`` goes to the server."""
    public, secret = write_key_pair(folder, name)
    return {"client_public": public, "client_secret": secret}


def allow_client(keys_dir: str | Path, public_file: str | Path, name: str | None = None) -> Path:
    """Add a client's public key to the allow-list (only the public key is copied, never a secret)."""
    public_file = Path(public_file)
    try:
        public, _ = zmq.auth.load_certificate(public_file)
    except (OSError, ValueError) as exc:
        raise SecurityError(f"cannot read a public key from {public_file}: {exc}") from None
    if not public or len(public) != 40:
        raise SecurityError(f"{public_file} holds no CURVE public key")
    name = name or public_file.name.split(".")[0]
    _check_name(name)
    clients = private_dir(Path(keys_dir) / "clients")
    target = clients / f"{name}.key"
    if target.exists():
        raise SecurityError(f"a client named {name!r} is already allowed ({target}); remove it first or pick --name")
    _write_new(target, _cert_text(public, None), 0o644)
    return target


def init_keys(keys_dir: str | Path, client: str = "client") -> dict[str, Path]:
    """One machine's whole setup (tests, or a server and its client under one user): the server
    pair, a client pair in the same folder, and that client on the allow-list. For a remote
    client use :func:`make_client_keys` on the client and :func:`allow_client` here."""
    made = init_server_keys(keys_dir)
    made.update(make_client_keys(keys_dir, client))
    made["client_public"] = allow_client(keys_dir, made["client_public"], client)
    return made


@dataclass(frozen=True)
class ServerKeys:
    public: bytes
    secret: bytes
    clients_dir: Path
    local_client: str | None = None
    """Z85 public key of the local client pair (local mode), whose owner is ``local``."""


def _read_key_file(path: Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    """A key file, refused if it is a symbolic link, not this user's or open to others (secrets),
    or holds an empty, short or mismatched key."""
    fd = -1
    try:
        if need_secret:
            fd = open_private_dir(path.parent)
            text = read_private_file(fd, path.parent, path.name)
        else:
            with open(path, encoding="ascii", errors="replace") as f:
                text = f.read(1 << 16)
    except LocalKeysError as exc:
        raise SecurityError(str(exc)) from None
    finally:
        if fd >= 0:
            os.close(fd)
    try:
        return parse_key_text(text, path, need_secret)
    except LocalKeysError as exc:
        raise SecurityError(str(exc)) from None


def load_server_keys(keys_dir: str | Path) -> ServerKeys:
    keys_dir = Path(keys_dir)
    secret_file = keys_dir / "server.key_secret"
    if not secret_file.is_file() and not secret_file.is_symlink():
        raise SecurityError(f"no server key pair in {keys_dir}: run `mpod123 keys init {keys_dir}` first")
    public, secret = _read_key_file(secret_file, need_secret=True)
    clients = keys_dir / "clients"
    if not clients.is_dir() or not any(clients.glob("*.key")):
        raise SecurityError(
            f"no allowed client keys in {clients}: make a client key pair with `mpod123 keys client DIR --name NAME` "
            f"and run `mpod123 keys allow {keys_dir} DIR/NAME.key` (or `mpod123 keys init {keys_dir} --client NAME`)"
        )
    return ServerKeys(public, secret, clients)


def _write_new_at(folder_fd: int, folder: Path, name: str, text: str) -> None:
    """``name`` in the folder, 0600, complete before it appears (written under a temporary name,
    then hard-linked: another process sees the whole file or none, and an existing file wins).
    Relative to the checked folder's descriptor where there is one (-1: by path)."""
    tmp = f".{name}.{secrets.token_hex(6)}"
    at = {"dir_fd": folder_fd} if folder_fd >= 0 else {}
    where = (lambda n: n) if folder_fd >= 0 else (lambda n: str(folder / n))
    fd = os.open(where(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600, **at)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        links = {"src_dir_fd": folder_fd, "dst_dir_fd": folder_fd} if folder_fd >= 0 else {}
        os.link(where(tmp), where(name), **links)
    except FileExistsError:
        pass  # another server of this user made it at the same moment: theirs stays
    finally:
        os.unlink(where(tmp), **at)


def ensure_local_keys(folder: Path | None = None) -> ServerKeys:
    """Local mode's keys, made on the first start: the server pair, a local client pair and its
    allow-list, all 0600 in this user's 0700 runtime folder; checked (owner, modes, no links,
    key lengths) on every start. Raises :class:`SecurityError` with the fix."""
    folder = folder or runtime_dir()
    if not os.path.lexists(folder):
        private_dir(folder)
    try:
        fd = open_private_dir(folder)
    except LocalKeysError as exc:
        raise SecurityError(str(exc)) from None
    try:
        names = set(os.listdir(fd if fd >= 0 else folder))
        if LOCAL_SERVER_SECRET not in names:
            client_public, client_secret = zmq.curve_keypair()
            server_public, server_secret = zmq.curve_keypair()
            _write_new_at(fd, folder, LOCAL_CLIENT_SECRET, _cert_text(client_public, client_secret))
            _write_new_at(fd, folder, LOCAL_SERVER_KEY, _cert_text(server_public, None))
            _write_new_at(fd, folder, LOCAL_SERVER_SECRET, _cert_text(server_public, server_secret))
        try:
            server = read_private_file(fd, folder, LOCAL_SERVER_SECRET)
            read_private_file(fd, folder, LOCAL_SERVER_KEY)
            client = read_private_file(fd, folder, LOCAL_CLIENT_SECRET)
        except FileNotFoundError as exc:
            raise SecurityError(f"{folder} lacks {exc.filename}: remove the folder's key files and start again") from None
        server_public, server_secret = parse_key_text(server, folder / LOCAL_SERVER_SECRET, need_secret=True)
        client_public, _ = parse_key_text(client, folder / LOCAL_CLIENT_SECRET, need_secret=True)
    except LocalKeysError as exc:
        raise SecurityError(str(exc)) from None
    finally:
        if fd >= 0:
            os.close(fd)
    return ServerKeys(server_public, server_secret, folder / LOCAL_CLIENTS, client_public.decode("ascii"))


def load_client_keys(secret_file: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) of a client from its ``NAME.key_secret`` file."""
    public, secret = zmq.auth.load_certificate(Path(secret_file))
    if secret is None:
        raise SecurityError(f"{secret_file} holds no secret key; use the .key_secret file")
    return public, secret


def load_public_key(path: str | Path) -> bytes:
    public, _ = zmq.auth.load_certificate(Path(path))
    return public


class CurveServerSecurity:
    """Starts the ZAP authenticator and configures the server socket for CURVE.

    ZAP asks :meth:`allows` (a callback), so the handshake and every request check the same
    allow-list, replaced whole on a successful reload only."""

    def __init__(self, context: zmq.Context, keys: ServerKeys) -> None:
        self.keys = keys
        self._allowed = self._read_allow_list()
        self.auth = ThreadAuthenticator(context)
        self.auth.start()
        self.auth.configure_curve_callback(domain="*", credentials_provider=self)

    def _read_allow_list(self) -> frozenset[str]:
        if self.keys.local_client is not None:
            return frozenset({self.keys.local_client})
        allowed = set()
        for path in sorted(self.keys.clients_dir.glob("*.key")):
            try:
                public, _ = _read_key_file(path, need_secret=False)
            except (OSError, SecurityError) as exc:
                raise SecurityError(f"cannot read the allowed key {path.name}: {exc}") from None
            allowed.add(public.decode("ascii"))
        return frozenset(allowed)

    def reload_allow_list(self) -> bool:
        """Re-read ``clients/`` (SIGHUP). A damaged key file is logged and the last good list
        kept; returns whether the list was replaced."""
        try:
            self._allowed = self._read_allow_list()
        except Exception as exc:  # noqa: BLE001  a signal handler must not stop the server
            log.error("the allow-list was not reloaded (%s); the last good one stays in force", exc)
            return False
        return True

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP: whether a connecting client's key (Z85) may complete its handshake."""
        return key.decode("ascii", errors="replace") in self._allowed

    def allows(self, user_id: str) -> bool:
        """Whether a User-Id (a z85 public key, as ZAP sets it) is on the allow-list as last read."""
        return user_id in self._allowed

    def configure(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.keys.secret
        sock.curve_publickey = self.keys.public
        sock.curve_server = True

    def stop(self) -> None:
        self.auth.stop()
