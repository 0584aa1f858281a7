"""Attacks, faults and restarts against `mpod123 serve` and `mpod123 client` as real processes on loopback.

Every server here binds 127.0.0.1 (or is refused before it binds), every wait
is bounded, and every process started is stopped by its id.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

zmq = pytest.importorskip("zmq")

from backend import protocol  # noqa: E402
from backend.client import Client, read_local_keys  # noqa: E402
from backend.protocol import Message  # noqa: E402
from benchmarks.abuser import rss_mb  # noqa: E402
from tests.serve_cli import start_serve  # noqa: E402


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Processes of one user: a private runtime folder for the local token."""
    runtime = tmp_path / "runtime"
    monkeypatch.setenv("MPOD123_RUNTIME_DIR", str(runtime))
    return {**os.environ, "MPOD123_RUNTIME_DIR": str(runtime), "HF_HUB_OFFLINE": "1"}


_serve = start_serve


def _endpoint_of(proc) -> str:
    """The endpoint from serve's first line (a warning line may come before it)."""
    line = ""
    for _ in range(5):
        line += proc.stdout.readline()
        match = re.search(r"backend on (tcp://\S+) ", line)
        if match:
            return match.group(1)
    raise AssertionError(line)


def _cli(env, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "mpod123", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


# ------------------------------------------------------------------ item 1
@pytest.mark.parametrize("bind", ["tcp://127.0.0.1:1;0.0.0.0:0", "tcp://[::1]:1;[::]:0"])
def test_a_source_address_cannot_smuggle_a_public_bind_past_the_loopback_rule(tmp_path, env, bind):
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpod123", "serve", "--bind", bind, "--data", str(tmp_path), "--job", "backend.demo:demo_job"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        line = proc.stdout.readline()
        assert "backend on" not in line, f"it listens: {line}"
        out = line + proc.communicate(timeout=30)[0]
        assert proc.returncode == 2, out
        assert "';'" in out or "source address" in out, out
    finally:
        _stop(proc)


def test_the_bound_endpoint_is_checked_as_well_as_the_requested_one():
    from backend.security import SecurityError, check_bind, check_bound

    with pytest.raises(SecurityError):
        check_bind("tcp://127.0.0.1:1;0.0.0.0:5555", None)
    check_bound("tcp://127.0.0.1:5555", None)
    with pytest.raises(SecurityError):
        check_bound("tcp://0.0.0.0:5555", None)
    with pytest.raises(SecurityError):
        check_bound("tcp://[::]:5555", None)


# ------------------------------------------------------------------ item 5
def test_abusive_clients_cannot_grow_the_servers_memory_without_bound(tmp_path, env):
    proc, endpoint = _serve(tmp_path, env)
    try:
        good = Client(endpoint, timeout_s=20)
        job_id = good.submit(b"img", {"steps": 1, "result_bytes": 8 << 20})
        assert good.wait(job_id, timeout_s=60).content["kind"] == "done"
        time.sleep(0.5)
        base = rss_mb(proc.pid)
        ctx = zmq.Context()
        server_key, (public, secret) = read_local_keys()  # these abusers hold the user's keys: authenticated

        def authenticated_dealer():
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDTIMEO, 10_000)
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server_key, public, secret
            return sock

        # 1. one message of many large frames
        big = authenticated_dealer()
        big.connect(endpoint)
        hello = protocol.encode(Message("hello", {"client": "x"}))
        frame = b"\0" * (40 << 20)
        big.send_multipart([*hello, *([frame] * 8)])
        peak = base
        for _ in range(40):
            peak = max(peak, rss_mb(proc.pid))
            time.sleep(0.1)
        big.setsockopt(zmq.RCVTIMEO, 60_000)
        big.recv_multipart()  # its error reply: the server has read (and refused) the whole message
        time.sleep(0.5)
        after_frames = rss_mb(proc.pid)
        big.close(0)
        # 2. a client that pipelines 8 MiB chunk requests and never reads
        greedy = authenticated_dealer()
        greedy.setsockopt(zmq.RCVHWM, 1)
        greedy.setsockopt(zmq.RCVBUF, 4096)
        greedy.connect(endpoint)
        for i in range(150):
            req = Message("fetch_chunk", {"offset": 0, "length": 8 << 20}, job_id=job_id, session=good.session)
            greedy.send_multipart(protocol.encode(req))
        for _ in range(40):
            peak = max(peak, rss_mb(proc.pid))
            time.sleep(0.1)
        chunk_growth = rss_mb(proc.pid) - base
        assert good.hello()["server"], "the server still answers"
        greedy.close(0)
        ctx.term()
        good.close()
        print(f"rss base {base:.0f} MB, peak {peak:.0f} MB, after frames {after_frames:.0f} MB, "
              f"chunk growth {chunk_growth:.0f} MB")
        assert after_frames - base < 100, f"{after_frames - base:.0f} MB kept after an oversize message"
        assert chunk_growth < 250, f"{chunk_growth:.0f} MB held for a client that never reads"
    finally:
        _stop(proc)


# ------------------------------------------------------------------ item 7
def test_two_clean_restarts_cost_no_attempt_and_the_job_finishes(tmp_path, env):
    proc, endpoint = _serve(tmp_path, env, "--max-attempts", "2")
    try:
        client = Client(endpoint, timeout_s=10)
        job_id = client.submit(b"img", {"steps": 40, "step_s": 0.05, "result_bytes": 100})
        for _ in range(2):
            deadline = time.time() + 30
            while client.status(job_id)["state"] != "running" and time.time() < deadline:
                time.sleep(0.1)
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
            proc, endpoint = _serve(tmp_path, env, "--max-attempts", "2", bind=endpoint)
        final = client.wait(job_id, timeout_s=60)
        assert final.content["kind"] == "done", final.content
        client.close()
    finally:
        _stop(proc)


def test_client_submit_wait_survives_a_killed_and_restarted_server(tmp_path, env):
    proc, endpoint = _serve(tmp_path, env)
    image = tmp_path / "img.png"
    image.write_bytes(b"\x89PNG not really")
    cli = subprocess.Popen(
        [sys.executable, "-m", "mpod123", "client", "submit", str(image), "--server", endpoint, "--wait",
         "--options", json.dumps({"steps": 30, "step_s": 0.05, "result_bytes": 100})],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        lines = []
        while not any('"progress"' in ln for ln in lines):
            line = cli.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        time.sleep(0.5)
        proc, _ = _serve(tmp_path, env, bind=endpoint)
        out = cli.communicate(timeout=60)[0]
        assert cli.returncode == 0, "".join(lines) + out
        assert '"done"' in out
    finally:
        _stop(cli)
        _stop(proc)


def test_a_job_that_recovery_fails_gets_a_terminal_event(tmp_path, env):
    proc, endpoint = _serve(tmp_path, env, "--max-attempts", "1")
    try:
        client = Client(endpoint, timeout_s=10)
        job_id = client.submit(b"img", {"steps": 40, "step_s": 0.05, "result_bytes": 100})
        deadline = time.time() + 30
        while client.status(job_id)["state"] != "running" and time.time() < deadline:
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc, _ = _serve(tmp_path, env, "--max-attempts", "1", bind=endpoint)
        final = client.wait(job_id, timeout_s=30)
        assert final.content["kind"] == "failed" and client.status(job_id)["state"] == "failed"
        client.close()
    finally:
        _stop(proc)


# ------------------------------------------------------------------ item 10
def test_keys_are_private_from_the_start_clients_send_only_public_keys_and_sighup_reloads(tmp_path, env):
    server_dir, client_dir = tmp_path / "server-keys", tmp_path / "bob-keys"
    old = os.umask(0)
    try:
        for args in (("keys", "init", str(server_dir)), ("keys", "client", str(client_dir), "--name", "bob"),
                     ("keys", "client", str(tmp_path / "alice-keys"), "--name", "alice")):
            r = _cli(env, *args)
            assert r.returncode == 0, r.stdout + r.stderr
    finally:
        os.umask(old)
    r = _cli(env, "keys", "allow", str(server_dir), str(tmp_path / "alice-keys" / "alice.key"))
    assert r.returncode == 0, r.stderr
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777
             for p in tmp_path.rglob("*") if "keys" in p.parts[-2] or p.name.endswith("keys")}
    assert modes["server-keys"] == 0o700 and modes["server-keys/clients"] == 0o700 and modes["bob-keys"] == 0o700
    assert modes["server-keys/server.key_secret"] == 0o600 and modes["bob-keys/bob.key_secret"] == 0o600
    assert all(m & 0o022 == 0 for m in modes.values()), modes
    assert not list(server_dir.rglob("*.key_secret"))[1:], "the server folder holds only its own secret"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpod123", "serve", "--bind", "tcp://127.0.0.1:0", "--data", str(tmp_path / "d"),
         "--keys", str(server_dir), "--job", "backend.demo:demo_job"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        endpoint = _endpoint_of(proc)
        common = ("--server", endpoint, "--server-key", str(server_dir / "server.key"), "--timeout", "3")
        assert _cli(env, "client", "list", *common, "--client-key", str(tmp_path / "alice-keys" / "alice.key_secret")).returncode == 0
        bob = ("--client-key", str(client_dir / "bob.key_secret"))
        assert _cli(env, "client", "list", *common, *bob).returncode != 0, "bob is not on the allow-list yet"
        assert _cli(env, "keys", "allow", str(server_dir), str(client_dir / "bob.key")).returncode == 0
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        r = _cli(env, "client", "list", *common, *bob)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        _stop(proc)


# ------------------------------------------------------------------ item 11
def test_local_clients_of_one_user_share_jobs_and_a_keyless_client_is_refused(tmp_path, env):
    proc, endpoint = _serve(tmp_path / "data", env)
    image = tmp_path / "img.png"
    image.write_bytes(b"\x89PNG not really")
    try:
        r = _cli(env, "client", "submit", str(image), "--server", endpoint, "--options", '{"steps": 1, "result_bytes": 777}')
        assert r.returncode == 0, r.stdout + r.stderr
        job_id = r.stdout.strip().splitlines()[-1]
        out = tmp_path / "out.glb"
        r = _cli(env, "client", "fetch", job_id, "--wait", "--server", endpoint, "-o", str(out))
        assert r.returncode == 0, r.stdout + r.stderr
        assert out.stat().st_size == 777
        runtime = Path(env["MPOD123_RUNTIME_DIR"])
        secret = next(runtime.glob("local.key_secret"))
        assert secret.stat().st_mode & 0o777 == 0o600 and runtime.stat().st_mode & 0o777 == 0o700
        stranger = {**env, "MPOD123_RUNTIME_DIR": str(tmp_path / "someone-else")}  # no keys: no handshake
        r = _cli(stranger, "client", "list", "--server", endpoint, "--session", "guess", "--timeout", "3")
        assert r.returncode == 2 and "no answer" in r.stderr, r.stdout + r.stderr
        r = _cli(stranger, "client", "status", job_id, "--server", endpoint, "--timeout", "3")
        assert r.returncode == 2 and "no answer" in r.stderr, r.stdout + r.stderr
    finally:
        _stop(proc)


# ------------------------------------------------------------------ item 12
def test_a_server_key_without_a_client_key_is_a_usage_error(tmp_path, env):
    key = tmp_path / "server.key"
    public, _ = zmq.curve_keypair()
    key.write_text(f'metadata\ncurve\n    public-key = "{public.decode()}"\n')  # a valid public key file
    r = _cli(env, "client", "list", "--server-key", str(key), "--timeout", "1")
    assert r.returncode == 2 and "--client-key" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_client_subcommands_have_help_on_every_flag(env):
    r = _cli(env, "client", "fetch", "--help")
    assert r.returncode == 0 and "-o OUT, --out OUT" in r.stdout and "--wait" in r.stdout, r.stdout


# ------------------------------------------------------------------ item 2
def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_emfile_while_starting_a_worker_requeues_the_job_and_it_finishes_later(tmp_path, env):
    """Idle TCP connections use up the server's file descriptors; starting a worker then fails
    with EMFILE. The job goes back to the queue and runs once descriptors are free again."""
    import resource
    import socket

    limit = 160

    def low_fd_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    proc = subprocess.Popen(
        [sys.executable, "-m", "mpod123", "serve", "--bind", "tcp://127.0.0.1:0", "--data", str(tmp_path),
         "--job", "backend.demo:demo_job"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, preexec_fn=low_fd_limit,
    )
    held: list[socket.socket] = []
    try:
        endpoint = _endpoint_of(proc)
        client = Client(endpoint, timeout_s=10)
        client.hello()
        host, port = endpoint[len("tcp://"):].rsplit(":", 1)
        deadline = time.time() + 20
        while _fds(proc.pid) < limit and time.time() < deadline:  # fill the server's table
            s = socket.create_connection((host, int(port)))
            held.append(s)
            if len(held) % 10 == 0:
                time.sleep(0.05)
        for _ in range(20):  # and keep a backlog of connections it cannot accept
            held.append(socket.create_connection((host, int(port))))
        time.sleep(0.3)
        assert _fds(proc.pid) >= limit - 2, f"{_fds(proc.pid)} descriptors in use"
        job_id = client.submit(b"img", {"steps": 1, "result_bytes": 100})
        time.sleep(2.0)  # the dispatcher tries (and fails) to start the worker
        for s in held:
            s.close()
        held.clear()
        final = client.wait(job_id, timeout_s=30)
        assert final.content["kind"] == "done", final.content
        assert client.status(job_id)["attempts"] == 1, "a worker that never started costs no attempt"
        client.close()
    finally:
        for s in held:
            s.close()
        _stop(proc)


def test_serve_exits_non_zero_when_its_store_stays_unusable(tmp_path, env):
    import sqlite3

    proc, endpoint = _serve(tmp_path, env, "--store-timeout", "0.2", "--give-up", "2")
    db = sqlite3.connect(tmp_path / "jobs.sqlite", isolation_level=None, timeout=5)
    try:
        db.execute("BEGIN EXCLUSIVE")
        code = proc.wait(timeout=30)
        out = proc.stdout.read()
        assert code == 1, out
        assert "restart" in out, out
    finally:
        db.close()
        _stop(proc)


def test_building_the_command_line_imports_no_service_module():
    code = ("import sys, json; from mpod123.cli.main import build_parser; build_parser(); "
            "print(json.dumps([m for m in ('zmq', 'backend.server', 'backend.store') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
