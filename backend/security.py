"""CURVE keys, the ZAP allow-list, and the bind policy.

* By default the backend binds to 127.0.0.1 only. Binding any other address
  needs CURVE keys and is refused without them (:func:`check_bind`).
* ``mpod123 keys init DIR`` makes the server's key pair and a client key pair
  (:func:`init_keys`). Layout::

      DIR/server.key          server public key (give it to clients)
      DIR/server.key_secret   server secret key (stays on the server)
      DIR/clients/NAME.key    allowed client public keys (the allow-list)
      DIR/NAME.key_secret     a client's key pair, to copy to that client

* With keys, a ZAP authenticator admits only clients whose public key is in
  ``DIR/clients``; the server then takes a job's owner from the client's key,
  so a job is visible only to the key that submitted it.

A wrong server key fails silently in ZeroMQ (the handshake never completes),
so clients need their own timeout; :class:`backend.client.Client` raises a
message that names this cause.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .protocol import LOCAL_TRANSPORTS, is_loopback  # noqa: F401  (part of this module's API)



class SecurityError(RuntimeError):
    """A refused security setting; the message says how to set it up."""


def check_bind(address: str, keys_dir: str | Path | None) -> None:
    """Refuse a non-loopback bind without CURVE keys."""
    if is_loopback(address):
        return
    if keys_dir is None:
        raise SecurityError(
            f"refusing to listen on {address} without encryption and authentication. "
            "Create keys with `mpod123 keys init KEYS_DIR`, give each client its key pair and "
            "KEYS_DIR/server.key, and start the server with --keys KEYS_DIR; or bind tcp://127.0.0.1 only."
        )


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
        raise SecurityError(f"no allowed client keys in {clients}: run `mpod123 keys init {keys_dir} --client NAME`")
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


def init_keys(keys_dir: str | Path, client: str = "client") -> dict[str, Path]:
    """Create the server key pair (once) and a client key pair added to the allow-list."""
    keys_dir = Path(keys_dir)
    (keys_dir / "clients").mkdir(parents=True, exist_ok=True)
    made: dict[str, Path] = {}
    if not (keys_dir / "server.key_secret").is_file():
        public, secret = zmq.auth.create_certificates(keys_dir, "server")
        made["server_public"], made["server_secret"] = Path(public), Path(secret)
    if not client.replace("-", "").replace("_", "").isalnum():
        raise SecurityError(f"client name {client!r} must be letters, digits, '-' or '_'")
    if (keys_dir / f"{client}.key_secret").exists():
        raise SecurityError(f"a client key named {client!r} already exists in {keys_dir}")
    public, secret = zmq.auth.create_certificates(keys_dir, client)
    shutil.move(public, keys_dir / "clients" / f"{client}.key")
    made["client_public"] = keys_dir / "clients" / f"{client}.key"
    made["client_secret"] = Path(secret)
    for path in keys_dir.glob("*.key_secret"):
        os.chmod(path, 0o600)
    return made


class CurveServerSecurity:
    """Starts the ZAP authenticator and configures the server socket for CURVE."""

    def __init__(self, context: zmq.Context, keys: ServerKeys) -> None:
        self.keys = keys
        self.auth = ThreadAuthenticator(context)
        self.auth.start()
        self.auth.configure_curve(domain="*", location=str(keys.clients_dir))

    def reload_allow_list(self) -> None:
        self.auth.configure_curve(domain="*", location=str(self.keys.clients_dir))

    def configure(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.keys.secret
        sock.curve_publickey = self.keys.public
        sock.curve_server = True

    def stop(self) -> None:
        self.auth.stop()
