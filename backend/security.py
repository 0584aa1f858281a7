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
* Without keys (loopback), the server writes a random token to a file only its
  user can read (:func:`ensure_local_token`; where: :func:`backend.client.token_path`),
  and answers only clients that send it: Jupyter's connection-file model. Every
  process of that user shares the file, so they share their jobs; other users
  of the machine cannot read it, so they cannot use the backend at all.

A wrong server key fails silently in ZeroMQ (the handshake never completes),
so clients need their own timeout; :class:`backend.client.Client` raises a
message that names this cause.
"""

from __future__ import annotations

import datetime
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .client import token_path
from .protocol import LOCAL_TRANSPORTS, is_loopback  # noqa: F401  (part of this module's API)


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
def private_dir(path: str | Path, fix_existing: bool = True) -> Path:
    """A folder only its owner can enter (0700, whatever the umask). ``fix_existing=False`` leaves
    the mode of a folder that was already there alone (a runtime folder named by a variable)."""
    path = Path(path)
    existed = path.is_dir()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if fix_existing or not existed:
        os.chmod(path, 0o700)
    return path


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


def load_server_keys(keys_dir: str | Path) -> ServerKeys:
    keys_dir = Path(keys_dir)
    secret_file = keys_dir / "server.key_secret"
    if not secret_file.is_file():
        raise SecurityError(f"no server key pair in {keys_dir}: run `mpod123 keys init {keys_dir}` first")
    public, secret = zmq.auth.load_certificate(secret_file)
    clients = keys_dir / "clients"
    if not clients.is_dir() or not any(clients.glob("*.key")):
        raise SecurityError(
            f"no allowed client keys in {clients}: make a client key pair with `mpod123 keys client DIR --name NAME` "
            f"and run `mpod123 keys allow {keys_dir} DIR/NAME.key` (or `mpod123 keys init {keys_dir} --client NAME`)"
        )
    return ServerKeys(public, secret, clients)


def load_client_keys(secret_file: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) of a client from its ``NAME.key_secret`` file."""
    public, secret = zmq.auth.load_certificate(Path(secret_file))
    if secret is None:
        raise SecurityError(f"{secret_file} holds no secret key; use the .key_secret file")
    return public, secret


def load_public_key(path: str | Path) -> bytes:
    public, _ = zmq.auth.load_certificate(Path(path))
    return public


def ensure_local_token(path: Path | None = None) -> tuple[str, Path]:
    """The local token (created once, 0600 in a 0700 folder); returns (token, its file)."""
    path = path or token_path()
    private_dir(path.parent, fix_existing=False)  # the file itself is what must be private
    if not path.exists():
        try:
            _write_new(path, secrets.token_hex(32) + "\n", 0o600)
        except FileExistsError:
            pass  # another server of this user made it at the same moment
    if hasattr(os, "getuid") and path.stat().st_uid != os.getuid():
        raise SecurityError(f"{path} belongs to another user; remove it or set MPOD123_RUNTIME_DIR")
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return path.read_text().strip(), path


class CurveServerSecurity:
    """Starts the ZAP authenticator and configures the server socket for CURVE."""

    def __init__(self, context: zmq.Context, keys: ServerKeys) -> None:
        self.keys = keys
        self.auth = ThreadAuthenticator(context)
        self.auth.start()
        self.auth.configure_curve(domain="*", location=str(keys.clients_dir))
        self._allowed = self._read_allow_list()

    def _read_allow_list(self) -> frozenset[str]:
        return frozenset(k.decode("ascii") for k in zmq.auth.load_certificates(str(self.keys.clients_dir)))

    def reload_allow_list(self) -> None:
        """Re-read ``clients/`` (SIGHUP): new connections are vetted by ZAP against it, and the
        server asks :meth:`allows` on every request, so a removed key's open connection is cut too."""
        self.auth.configure_curve(domain="*", location=str(self.keys.clients_dir))
        self._allowed = self._read_allow_list()

    def allows(self, user_id: str) -> bool:
        """Whether a User-Id (a z85 public key, as ZAP sets it) is on the allow-list as last read."""
        return user_id in self._allowed

    def configure(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.keys.secret
        sock.curve_publickey = self.keys.public
        sock.curve_server = True

    def stop(self) -> None:
        self.auth.stop()
