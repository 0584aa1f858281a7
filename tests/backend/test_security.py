"""CURVE keys, the ZAP allow-list, per-key job ownership, the bind policy, and the client's clear errors."""

from __future__ import annotations

import pytest

zmq = pytest.importorskip("zmq")

from backend.client import BackendError, BackendTimeout, Client  # noqa: E402
from backend.store import JobStore  # noqa: E402
from backend.security import (  # noqa: E402
    CurveServerSecurity,
    SecurityError,
    check_bind,
    init_keys,
    is_loopback,
    load_client_keys,
    load_public_key,
    load_server_keys,
)
from backend.server import Server, ServerConfig  # noqa: E402


@pytest.fixture
def secure(tmp_path):
    keys = tmp_path / "keys"
    init_keys(keys, "alice")
    init_keys(keys, "bob")
    ctx = zmq.Context()
    security = CurveServerSecurity(ctx, load_server_keys(keys))
    store = JobStore(tmp_path / "jobs.sqlite")
    server = Server(store, ServerConfig(bind="tcp://127.0.0.1:0", key_allowed=security.allows), context=ctx,
                    configure_socket=security.configure)
    endpoint = server.start()
    yield keys, endpoint, store, security
    server.stop()
    security.stop()
    store.close()
    ctx.term()


def _client(keys, endpoint, name, server_key=None, timeout=3.0):
    return Client(
        endpoint,
        session="same-session-for-everyone",
        timeout_s=timeout,
        server_key=server_key or load_public_key(keys / "server.key"),
        client_keys=load_client_keys(keys / f"{name}.key_secret"),
    )


def test_allowed_clients_talk_and_jobs_belong_to_their_key(secure):
    keys, endpoint, store, _ = secure
    with _client(keys, endpoint, "alice") as alice, _client(keys, endpoint, "bob") as bob:
        assert alice.hello()["server"]
        job_id = alice.submit(b"\x89PNG image", {"steps": 1})
        assert store.list()[0].owner.startswith("key:") and store.list()[0].client_id == job_id
        # bob sends the very same session string, but his key is different
        with pytest.raises(BackendError, match="UnknownJob"):
            bob.status(job_id)
        with pytest.raises(BackendError, match="UnknownJob"):
            bob.cancel(job_id)
        assert bob.list_jobs() == []
        assert alice.status(job_id)["state"] == "queued"


def test_a_client_without_an_allowed_key_gets_nothing(secure, tmp_path):
    keys, endpoint, _, _ = secure
    stranger = tmp_path / "stranger"
    init_keys(stranger, "eve")  # a valid key pair, but not on the server's allow-list
    client = Client(
        endpoint, timeout_s=1.5, server_key=load_public_key(keys / "server.key"),
        client_keys=load_client_keys(stranger / "eve.key_secret"),
    )
    with pytest.raises(BackendTimeout, match="allow-list"):
        client.hello()
    client.close()


def test_a_wrong_server_key_is_a_clear_timeout_not_a_hang(secure, tmp_path):
    keys, endpoint, _, _ = secure
    other = tmp_path / "other"
    init_keys(other, "x")
    with _client(keys, endpoint, "alice", server_key=load_public_key(other / "server.key"), timeout=1.5) as c:
        with pytest.raises(BackendTimeout, match="server public key is wrong"):
            c.hello()


def test_a_plain_client_cannot_talk_to_a_curve_server(secure):
    _, endpoint, _, _ = secure
    with Client(endpoint, timeout_s=1.5) as c:
        with pytest.raises(BackendTimeout):
            c.hello()


@pytest.mark.parametrize(
    "address, local",
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.8.0.1:1", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("ipc:///tmp/mpod123.sock", True),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://*:5555", False),
        ("tcp://192.168.1.20:5555", False),
        ("tcp://eth0:5555", False),
    ],
)
def test_bind_policy(address, local, tmp_path):
    assert is_loopback(address) is local
    if local:
        check_bind(address, None)
    else:
        with pytest.raises(SecurityError, match="mpod123 keys init"):
            check_bind(address, None)
        check_bind(address, tmp_path)


def test_key_setup_errors_say_what_to_run(tmp_path):
    with pytest.raises(SecurityError, match="keys init"):
        load_server_keys(tmp_path / "nothing")
    init_keys(tmp_path / "k", "alice")
    with pytest.raises(SecurityError, match="already exists"):
        init_keys(tmp_path / "k", "alice")
    with pytest.raises(SecurityError, match="letters"):
        init_keys(tmp_path / "k", "../evil")
    assert (tmp_path / "k" / "clients" / "alice.key").is_file()
    assert oct((tmp_path / "k" / "alice.key_secret").stat().st_mode & 0o777) == "0o600"


def test_a_revoked_key_loses_its_open_connection_at_the_next_request_and_its_event_stream(secure):
    """SIGHUP reloads the allow-list; a client already connected with a removed key must not keep working."""
    import time

    keys, endpoint, store, security = secure
    with _client(keys, endpoint, "alice") as alice, _client(keys, endpoint, "bob") as bob:
        bob_job = bob.submit(b"\x89PNG image", {"steps": 1})  # bob is subscribed to his job's events
        server_job = store.list()[0].job_id
        store.append_event(server_job, "progress", {"stage": "outline", "step": 1, "total": 2})
        deadline = time.monotonic() + 5
        seen = []
        while not seen and time.monotonic() < deadline:
            seen = bob.drain()
            time.sleep(0.05)
        assert [e.content["kind"] for e in seen] == ["progress"], "the stream works before the revocation"

        (keys / "clients" / "bob.key").unlink()
        security.reload_allow_list()  # what the SIGHUP handler calls
        with pytest.raises(BackendError, match=r"KeyRevoked.*no longer on this server's allow-list"):
            bob.status(bob_job)
        with pytest.raises(BackendError, match="KeyRevoked"):
            bob.submit(b"\x89PNG another", {"steps": 1})
        store.append_event(server_job, "progress", {"stage": "outline", "step": 2, "total": 2})
        time.sleep(1.0)
        assert bob.drain() == [], "no event of a revoked key's job is forwarded on its old connection"
        assert alice.hello()["server"] and alice.list_jobs() == [], "other keys are unaffected"
        assert len(store.list()) == 1, "the revoked key's submit created nothing"
