"""The service's boundary (issue 30): no client crashes it, starves it, or reads another user's work.

Real `mpod123 serve` processes on loopback, real sockets, real clients in
their own processes; every wait is bounded and every process is stopped by
its id. Where a case is about another local user, the second user is a real
other uid when the tests run as root, and the test says why it skips otherwise.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

zmq = pytest.importorskip("zmq")

from backend import protocol  # noqa: E402
from backend.client import Client  # noqa: E402
from backend.protocol import Message  # noqa: E402
from benchmarks.abuser import peak_growth_mb  # noqa: E402
from tests.serve_cli import start_serve  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Processes of one user: a private runtime folder (keys) of their own."""
    runtime = tmp_path / "runtime"
    monkeypatch.setenv("MPOD123_RUNTIME_DIR", str(runtime))
    return {**os.environ, "MPOD123_RUNTIME_DIR": str(runtime), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


_serve = start_serve


def _serve_fails(data, env, *extra):
    """(exit code, output) of a serve that must refuse to start."""
    r = subprocess.run([sys.executable, "-m", "mpod123", "serve", "--bind", "tcp://127.0.0.1:0",
                        "--data", str(data), "--job", "backend.demo:demo_job", *extra],
                       capture_output=True, text=True, env=env, timeout=60)
    return r.returncode, r.stdout + r.stderr


def _stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def _python(env, code, *args, timeout=180, user=None):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT,
                          preexec_fn=(lambda: (os.setgid(user), os.setuid(user))) if user is not None else None)


def _as_root():
    return hasattr(os, "getuid") and os.getuid() == 0


def _other_user() -> int | None:
    """A second local uid whose processes can run this interpreter (root runs them as nobody), or None."""
    if not _as_root():
        return None
    try:
        r = subprocess.run([sys.executable, "-c", "import zmq"], capture_output=True, timeout=60,
                           preexec_fn=lambda: (os.setgid(NOBODY), os.setuid(NOBODY)))
    except PermissionError:
        return None
    return NOBODY if r.returncode == 0 else None


# ------------------------------------------------------------------ item 1
_NON_READING_DEALER = """
    import sys, time, zmq
    from backend import protocol
    from backend.protocol import Message
    endpoint, send_s, idle_s = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.HEARTBEAT_IVL, 2000)  # the client's own ZMTP heartbeat settings
    s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 10000)
    s.setsockopt(zmq.SNDTIMEO, 100)
    s.connect(endpoint)
    end, n = time.time() + send_s, 0
    while time.time() < end:  # hello needs no credentials; the replies are never read
        try:
            s.send_multipart(protocol.encode(Message("hello", {"client": "x" * 1000})))
            n += 1
        except zmq.Again:
            time.sleep(0.01)
    time.sleep(idle_s)
    print("sent", n)
"""


_SLOW_CLIENT = """
    import sys, time
    from backend.client import Client
    c = Client(sys.argv[1], timeout_s=30)
    job = c.submit(b"img", {"steps": 1500})  # two stages: about 3,000 events
    time.sleep(float(sys.argv[2]))  # reads nothing for a while
    seen = []
    final = c.wait(job, timeout_s=120, on_event=seen.append)
    seqs = [m.seq for m in seen if m.job_id == job]
    assert final.content["kind"] == "done", final.content
    assert seqs == list(range(1, seqs[-1] + 1)), (len(seqs), seqs[:5], seqs[-5:])
    print("events", len(seqs))
"""


def test_neither_a_non_reading_heartbeating_peer_nor_the_projects_stalled_client_aborts_the_server(tmp_path, env):
    """Item 1, both ways at once against one server, each for its full 60 s: a raw DEALER with the client's
    ZMTP heartbeat settings sending ``hello`` for 30 s without reading, then idle for 30 s (the server
    died of libzmq's assertion in 11-45 s, 7 of 7 runs); and the project's ``Client`` reading nothing of a
    3,000-event job for 60 s, which is dropped and then catches up with every event, in order."""
    proc, endpoint = _serve(tmp_path / "data", env)
    started = []
    try:
        for code, args in ((_NON_READING_DEALER, (endpoint, "30", "30")), (_SLOW_CLIENT, (endpoint, "60"))):
            started.append(subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], text=True,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT))
        dealer, slow = started
        d_out, d_err = dealer.communicate(timeout=120)
        s_out, s_err = slow.communicate(timeout=300)
        assert proc.poll() is None, f"the server died: {proc.communicate(timeout=10)[0][-2000:]}"
        assert dealer.returncode == 0 and d_out.startswith("sent"), d_out + d_err
        assert slow.returncode == 0, s_out + s_err
        assert int(s_out.split()[-1]) > 3000
        with Client(endpoint, timeout_s=20) as c:
            assert c.hello()["server"] == "mpod123-backend"
    finally:
        for p in started:
            _stop(p)
        _stop(proc)


def test_no_socket_of_the_service_turns_zmtp_heartbeats_on(tmp_path):
    from backend.server import Server, ServerConfig
    from backend.store import JobStore

    store = JobStore(tmp_path / "jobs.sqlite")
    server = Server(store, ServerConfig(bind="tcp://127.0.0.1:0"))
    sock = server.make_socket()
    try:
        assert sock.getsockopt(zmq.HEARTBEAT_IVL) == 0 and sock.getsockopt(zmq.HEARTBEAT_TIMEOUT) in (-1, 0)
    finally:
        sock.close(0)
        store.close()
    for path in [ROOT / "backend" / "client.py", *sorted((ROOT / "blender_addon").rglob("*.py"))]:
        text = path.read_text()  # the add-on's vendored client included, wherever it lives
        assert "HEARTBEAT_IVL" not in text and "HEARTBEAT_TIMEOUT" not in text, path


# ------------------------------------------------------------------ item 2
_SQUATTER = """
    import sys, time, zmq
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.setsockopt(zmq.LINGER, 0)
    s.bind(sys.argv[1])
    got = []
    end = time.time() + float(sys.argv[2])
    while time.time() < end:
        if s.poll(100):
            got.append(b"|".join(s.recv_multipart()))
    print(len(got))
    sys.stdout.buffer.write(b"\\n".join(got))
"""


def test_a_squatter_on_the_port_learns_nothing_from_a_local_client(tmp_path, env):
    proc, endpoint = _serve(tmp_path / "data", env)
    _stop(proc)  # the server has run once (its keys exist) and is down now
    other = _other_user()  # the squatter is another user where it can be; the wire is the same either way
    squatter = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_SQUATTER), endpoint, "12"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT,
                                preexec_fn=(lambda: (os.setgid(other), os.setuid(other))) if other else None)
    try:
        time.sleep(2)
        r = subprocess.run([sys.executable, "-m", "mpod123", "client", "list", "--server", endpoint,
                            "--timeout", "4"], capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 2, r.stdout + r.stderr
        out, err = squatter.communicate(timeout=30)
        runtime = Path(env["MPOD123_RUNTIME_DIR"])
        secrets_on_disk = [f.read_bytes() for f in runtime.rglob("*") if f.is_file()]
        assert out.split(b"\n", 1)[0] == b"0", f"the squatter received: {out[:300]!r}"
        for blob in secrets_on_disk:
            for line in blob.splitlines():
                if b"secret" in line or len(line.strip()) == 64:
                    assert line.split(b'"')[-2 if b'"' in line else 0] not in out
    finally:
        _stop(squatter)


def test_local_mode_is_curve_with_keys_only_this_user_can_read(tmp_path, env):
    proc, endpoint = _serve(tmp_path / "data", env, umask=0)
    try:
        runtime = Path(env["MPOD123_RUNTIME_DIR"])
        assert stat.S_IMODE(runtime.stat().st_mode) == 0o700
        assert stat.S_IMODE(runtime.parent.stat().st_mode) & 0o022 == 0, "parents made 0777 under umask 000"
        files = [f for f in runtime.rglob("*") if f.is_file()]
        assert any(f.name.endswith("key_secret") for f in files) and not any(f.name == "token" for f in files)
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        with Client(endpoint, timeout_s=20) as c:  # the user's own client finds the keys by itself
            assert c.curve
            job = c.submit(b"img", {"steps": 1})
            assert c.wait(job, timeout_s=60).content["kind"] == "done"
        plain = zmq.Context.instance().socket(zmq.DEALER)  # no keys: the handshake never completes
        plain.setsockopt(zmq.LINGER, 0)
        plain.connect(endpoint)
        plain.send_multipart(protocol.encode(Message("hello", {"client": "x"})), zmq.NOBLOCK)
        assert plain.poll(3000) == 0
        plain.close(0)
    finally:
        _stop(proc)


def test_another_local_user_cannot_use_this_users_backend(tmp_path, env):
    other = _other_user()
    if other is None:
        pytest.skip("needs root and an interpreter that another uid can run (this venv is not reachable by nobody)")
    proc, endpoint = _serve(tmp_path / "data", env)
    try:
        runtime = Path(env["MPOD123_RUNTIME_DIR"])
        r = _python({**env, "MPOD123_RUNTIME_DIR": str(runtime)}, """
            import sys
            from backend.client import Client
            try:
                Client(sys.argv[1], timeout_s=3).list_jobs()
            except Exception as exc:
                print(type(exc).__name__, exc)
            else:
                print("LISTED")
        """, endpoint, user=other, timeout=60)
        assert "LISTED" not in r.stdout and "Permission" in r.stdout + r.stderr, r.stdout + r.stderr
    finally:
        _stop(proc)


@pytest.mark.parametrize("case", ["symlinked folder", "wide folder", "symlinked key", "wide key", "empty secret",
                                  "short secret", "other owner"])
def test_a_runtime_folder_or_key_that_is_not_private_is_refused_with_the_fix(tmp_path, env, case):
    runtime = Path(env["MPOD123_RUNTIME_DIR"])
    if case in ("symlinked key", "wide key", "empty secret", "short secret", "other owner"):
        proc, _ = _serve(tmp_path / "data", env)  # makes the keys
        _stop(proc)
    secret = next(runtime.glob("server*key_secret"), None)
    if case == "symlinked folder":
        real = tmp_path / "elsewhere"
        real.mkdir(mode=0o700)
        runtime.symlink_to(real)
    elif case == "wide folder":
        runtime.mkdir(mode=0o700)
        os.chmod(runtime, 0o755)
    elif case == "symlinked key":
        target = tmp_path / "known-file"
        target.write_text(secret.read_text())
        os.chmod(target, 0o644)
        secret.unlink()
        secret.symlink_to(target)
    elif case == "wide key":
        os.chmod(secret, 0o644)
    elif case == "empty secret":
        secret.write_text("")
    elif case == "short secret":
        secret.write_text(re.sub(r'secret-key = "[^"]*"', 'secret-key = "abc"', secret.read_text()))
    elif case == "other owner":
        if not _as_root():
            pytest.skip("giving a file to another user needs root")
        os.chown(secret, NOBODY, NOBODY)
    code, out = _serve_fails(tmp_path / "data", env)
    assert code == 2, out
    assert str(runtime) in out or runtime.name in out, out
    if case == "symlinked key":
        assert stat.S_IMODE(target.stat().st_mode) == 0o644, "the link's target was chmodded"
    if case == "wide folder":
        assert "chmod 700" in out, out


# ------------------------------------------------------------------ item 3
def test_data_is_private_from_the_start_and_a_wide_existing_folder_is_narrowed(tmp_path, env):
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(data, 0o755)
    (data / "results").mkdir()
    os.chmod(data / "results", 0o755)
    proc, endpoint = _serve(data, env, umask=0o022)
    try:
        with Client(endpoint, timeout_s=20) as c:
            job = c.submit(b"img", {"steps": 1, "result_bytes": 100})
            assert c.wait(job, timeout_s=60).content["kind"] == "done"
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        found = {p.name for p in data.rglob("*")}
        assert "jobs.sqlite" in found and any(n.endswith(".glb") for n in found), found
        for p in data.rglob("*"):
            if p.name.startswith("serve") or p.is_symlink():
                continue
            mode = stat.S_IMODE(p.stat().st_mode)
            assert mode & 0o077 == 0, f"{p.relative_to(data)} is {oct(mode)}"
    finally:
        _stop(proc)


def test_a_data_folder_of_another_user_is_refused(tmp_path, env):
    if not _as_root():
        pytest.skip("a folder owned by another user needs root to make")
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, NOBODY, NOBODY)
    code, out = _serve_fails(data, env)
    assert code == 2 and "belongs to" in out, out


# ------------------------------------------------------------------ item 4
def test_unauthenticated_peers_cannot_make_the_server_hold_memory(tmp_path, env):
    proc, endpoint = _serve(tmp_path / "data", env)
    try:
        with Client(endpoint, timeout_s=20) as c:
            c.hello()
        time.sleep(0.5)
        for mode, n, mb in (("frames", 40, 10), ("pipelined", 30, 10)):
            growth, _ = peak_growth_mb(proc.pid, endpoint, mode, n, mb, env, ROOT)
            assert growth < 200, f"unauthenticated {mode} took the server up {growth:.0f} MB"
        assert proc.poll() is None
    finally:
        _stop(proc)


# ------------------------------------------------------------------ items 6-8
@pytest.fixture
def quiet_server(tmp_path):
    """An in-process server with no executor: submitted jobs stay queued."""
    from backend.server import Server, ServerConfig
    from backend.store import JobStore

    store = JobStore(tmp_path / "jobs.sqlite")
    server = Server(store, ServerConfig(bind="tcp://127.0.0.1:0"))
    server.endpoint_ = server.start()
    yield server
    server.stop()
    store.close()


def test_a_job_cancelled_while_queued_ends_with_a_terminal_event_and_drops_its_image(quiet_server):
    with Client(quiet_server.endpoint_, session="alice", timeout_s=10, local_keys=False) as c:
        job = c.submit(b"\x89PNG an image", {"steps": 1})
        assert c.cancel(job) == "cancelled"
        final = c.wait(job, timeout_s=20)
        assert final.content["kind"] == "cancelled"
    stored = quiet_server.store.get_owned(job, "session:alice")
    assert quiet_server.store.image(stored.job_id) == b""


def test_a_huge_job_error_is_cut_and_the_owner_still_works(quiet_server):
    from backend.workers import fail_job

    store = quiet_server.store
    with Client(quiet_server.endpoint_, session="alice", timeout_s=10, local_keys=False) as c:
        job = c.submit(b"img", {"steps": 1})
        server_id = store.get_owned(job, "session:alice").job_id
        store.claim_next()
        fail_job(store, server_id, "Boom", "x" * (2 << 20) + " in /srv/secret/cache/model.bin")
        final = c.wait(job, timeout_s=20)
        assert final.content["kind"] == "failed"
        assert len(final.content["evalue"]) <= protocol.MAX_ERROR_CHARS + 10
        assert c.status(job)["state"] == "failed" and len(c.status(job)["error"]) < 4096
        assert [j["job_id"] for j in c.list_jobs()] == [job]


def test_one_owner_cannot_make_the_server_follow_a_job_without_bound(tmp_path):
    """Resubscribing to a queued job from ever new connections kept every subscription until the job
    emitted (15,000 of them: 15 % of a core, idle). Past ``max_follows_per_owner`` a follow is refused
    with the fix, the other owners are untouched, and the owner can follow again once its jobs end."""
    from backend.client import BackendError
    from backend.server import Server, ServerConfig
    from backend.store import JobStore

    store = JobStore(tmp_path / "jobs.sqlite")
    server = Server(store, ServerConfig(bind="tcp://127.0.0.1:0", max_follows_per_owner=8))
    endpoint = server.start()
    clients = []
    try:
        alice = Client(endpoint, session="alice", timeout_s=10, local_keys=False)
        clients.append(alice)
        job = alice.submit(b"\x89PNG an image", {"steps": 1})
        refused = []
        for _ in range(30):
            c = Client(endpoint, session="alice", timeout_s=10, local_keys=False)
            clients.append(c)
            try:
                c.resume(job, 0)
            except BackendError as exc:
                refused.append(exc)
        assert len(refused) == 30 - 7, f"{len(refused)} refused"
        assert {e.ename for e in refused} == {"TooManyFollowed"} and "close" in refused[0].hint
        assert server.subscriptions() == 8
        with pytest.raises(BackendError, match="TooManyFollowed"):  # a new job would be followed too: not stored
            clients[-1].submit(b"\x89PNG another", {"steps": 1})
        assert store.count(owner="session:alice") == 1
        with Client(endpoint, session="bob", timeout_s=10, local_keys=False) as bob:  # another owner follows
            other = bob.submit(b"\x89PNG bob's", {"steps": 1})
            assert bob.resume(other, 0)["state"] == "queued"
        assert alice.cancel(job) == "cancelled"
        alice.wait(job, timeout_s=20)
        deadline = time.time() + 10
        while server.subscriptions() > 1 and time.time() < deadline:  # bob's, until his job ends
            time.sleep(0.05)
        assert clients[-1].resume(job, 0)["state"] == "cancelled"  # room again
    finally:
        for c in clients:
            c.close()
        server.stop()
        store.close()


def test_errors_and_log_events_carry_no_server_paths():
    from backend.workers import public_error, scrub_paths

    text = public_error(OSError(2, "No such file", "/root/.cache/huggingface/hub/models--x/config.json"))
    assert "/root" not in text and "config.json" in text
    assert scrub_paths("in /usr/lib/python3.11/site-packages/torch/__init__.py, line 3") == \
        "in .../__init__.py, line 3"
    assert scrub_paths("ratio 1/2, http://example.org/a/b") == "ratio 1/2, http://example.org/a/b"


def test_a_corrupt_options_row_fails_that_job_and_serve_still_starts(tmp_path, env):
    import sqlite3

    from backend.store import JobStore

    data = tmp_path / "data"
    store = JobStore(data / "jobs.sqlite")
    bad, _ = store.submit("bad", "local", {"steps": 1}, b"img")
    good, _ = store.submit("good", "local", {"steps": 1}, b"img")
    store.claim_next()  # the bad one was running when the backend died
    store.close()
    db = sqlite3.connect(data / "jobs.sqlite")
    db.execute("UPDATE jobs SET options='{not json' WHERE job_id=?", (bad.job_id,))
    db.commit()
    db.close()
    proc, endpoint = _serve(data, env)
    try:
        with Client(endpoint, timeout_s=20) as c:
            c.resume("bad", 0)
            c.resume("good", 0)
            assert c.wait("bad", timeout_s=90).content["kind"] == "failed"
            assert c.wait("good", timeout_s=90).content["kind"] == "done"
        assert proc.poll() is None
    finally:
        _stop(proc)


def test_a_malformed_key_file_and_sighup_keep_the_last_good_allow_list(tmp_path, env):
    from backend.security import init_keys, load_client_keys, load_public_key

    keys = tmp_path / "keys"
    made = init_keys(keys)
    proc, endpoint = _serve(tmp_path / "data", env, "--keys", str(keys))
    try:
        with Client(endpoint, timeout_s=20, server_key=load_public_key(made["server_public"]),
                    client_keys=load_client_keys(made["client_secret"])) as c:
            assert c.hello()["server"]
            (keys / "clients" / "broken.key").write_text('metadata\ncurve\n')  # no public key at all
            os.kill(proc.pid, signal.SIGHUP)
            time.sleep(1.0)
            assert proc.poll() is None, proc.communicate(timeout=10)[0][-2000:]
            job = c.submit(b"img", {"steps": 1})
            assert c.wait(job, timeout_s=60).content["kind"] == "done"
    finally:
        _stop(proc)


def test_undecodable_messages_get_an_error_and_no_traceback_in_the_log(quiet_server, caplog):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(quiet_server.endpoint_)
    nested = b"[" * 100_000 + b"]" * 100_000
    big_number = b'{"n": ' + b"9" * 5000 + b"}"
    try:
        for content in [nested, big_number] * 50:
            header = json.dumps({"msg_id": "m", "msg_type": "hello", "version": "1.0", "session": "s"}).encode()
            sock.send_multipart([protocol.MAGIC, header, content])
        replies = []
        while len(replies) < 100 and sock.poll(10_000):
            replies.append(protocol.decode(sock.recv_multipart()))
    finally:
        sock.close(0)
    assert len(replies) == 100 and {m.content["ename"] for m in replies} == {"BadJSON"}
    assert all(len(m.content["evalue"]) < 400 for m in replies)
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged for a bad message"


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_flood_of_idle_connections_neither_pins_the_cpu_nor_stops_serve(tmp_path, env):
    import resource
    import socket

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 4096:
        pytest.skip(f"the hard limit on open files is {hard}; the test needs 4096")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
    proc = subprocess.Popen(  # a service manager's usual soft limit: 1024 open files
        [sys.executable, "-m", "mpod123", "serve", "--bind", "tcp://127.0.0.1:0", "--data", str(tmp_path / "d"),
         "--job", "backend.demo:demo_job", "--give-up", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard)))
    conns = []
    try:
        line = ""
        for _ in range(5):
            line += proc.stdout.readline()
            if m := re.search(r"backend on tcp://127.0.0.1:(\d+) ", line):
                break
        port = int(m.group(1))
        for _ in range(1100):
            conns.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(1.0)
        cpu0, t0 = _cpu_s(proc.pid), time.monotonic()
        time.sleep(8.0)
        share = (_cpu_s(proc.pid) - cpu0) / (time.monotonic() - t0)
        assert proc.poll() is None, proc.communicate(timeout=10)[0][-2000:]
        assert share < 0.5, f"serve used {share:.0%} of a core with 1,100 idle connections"
        with Client(f"tcp://127.0.0.1:{port}", timeout_s=20) as c:
            job = c.submit(b"img", {"steps": 1})
            assert c.wait(job, timeout_s=60).content["kind"] == "done"
    finally:
        for s in conns:
            s.close()
        _stop(proc)


def test_a_long_database_lock_requeues_the_running_job_with_its_attempt_given_back(tmp_path):
    import sqlite3

    from tests.backend_harness import Backend

    b = Backend(tmp_path, workers=1, poll_s=0.02, store_timeout_s=0.5)  # the workers give up on a lock after 0.5 s
    try:
        with Client(b.endpoint, session="alice", timeout_s=20, local_keys=False) as c:
            job = c.submit(b"img", {"steps": 40, "step_s": 0.05, "result_bytes": 100})
            seen = []
            deadline = time.monotonic() + 60
            while not any(m.content["kind"] == "progress" for m in seen) and time.monotonic() < deadline:
                seen += c.drain()
                time.sleep(0.05)
            other = sqlite3.connect(b.store.path, isolation_level=None, timeout=5)
            other.execute("BEGIN EXCLUSIVE")
            time.sleep(2.0)  # four times the workers' busy timeout
            other.execute("ROLLBACK")
            other.close()
            final = c.wait(job, timeout_s=120, on_event=seen.append)
            assert final.content["kind"] == "done", final.content
            assert any("locked" in m.content.get("text", "") for m in seen), [m.content for m in seen][-5:]
            assert c.status(job)["attempts"] == 1, "the lock was charged as the job's failure"
    finally:
        b.stop()


def test_another_local_user_reads_neither_the_keys_nor_the_stored_work(env):
    import shutil
    import tempfile

    if not _as_root():
        pytest.skip("running a process as another uid needs root")
    base = Path(tempfile.mkdtemp(prefix="mpod123-two-users-"))
    os.chmod(base, 0o755)  # a folder every user can enter, as a home folder often is
    data, runtime = base / "data", base / "runtime"
    env = {**env, "MPOD123_RUNTIME_DIR": str(runtime)}
    proc, endpoint = _serve(data, env, umask=0o022)
    try:
        os.environ["MPOD123_RUNTIME_DIR"] = str(runtime)  # restored by the env fixture's monkeypatch
        with Client(endpoint, timeout_s=20) as c:
            job = c.submit(b"\x89PNG secret image", {"steps": 1, "result_bytes": 100})
            assert c.wait(job, timeout_s=60).content["kind"] == "done"
        targets = [*sorted(runtime.glob("*key_secret")), data / "jobs.sqlite", next(data.rglob("*.glb"))]
        assert len(targets) >= 3
        for target in targets:
            r = subprocess.run(["cat", str(target)], capture_output=True, timeout=10,
                               preexec_fn=lambda: (os.setgid(NOBODY), os.setuid(NOBODY)))
            assert r.returncode != 0 and b"Permission denied" in r.stderr, (target, r.stderr)
        r = subprocess.run(["ls", str(base)], capture_output=True, timeout=10,
                           preexec_fn=lambda: (os.setgid(NOBODY), os.setuid(NOBODY)))
        assert r.returncode == 0, "the shared folder itself is readable: the refusals above are our files' modes"
    finally:
        _stop(proc)
        shutil.rmtree(base, ignore_errors=True)


def test_narrowing_a_wide_data_folder_touches_only_what_the_service_keeps(tmp_path):
    from backend.security import private_data_dir

    data = tmp_path / "data"
    (data / "results").mkdir(parents=True)
    (data / "results" / "r.glb").write_bytes(b"x")
    (data / "notes.txt").write_text("the user's own file")
    (data / "jobs.sqlite").write_bytes(b"")
    for p, mode in ((data, 0o755), (data / "results", 0o755), (data / "results" / "r.glb", 0o644),
                    (data / "notes.txt", 0o644), (data / "jobs.sqlite", 0o644)):
        os.chmod(p, mode)
    assert private_data_dir(data) == (data, True)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [data, *data.rglob("*")]}
    assert modes == {"data": 0o700, "results": 0o700, "r.glb": 0o600, "jobs.sqlite": 0o600, "notes.txt": 0o644}


def test_local_keys_are_made_and_read_by_path_where_folders_cannot_be_opened(tmp_path, monkeypatch):
    """Windows: no O_DIRECTORY or dir_fd; the keys are written and read by path (a link is still refused)."""
    from backend import protocol as proto
    from backend.security import ensure_local_keys

    monkeypatch.setattr(proto, "DIR_FD", False)
    keys = ensure_local_keys(tmp_path / "rt")
    found = proto.read_local_keys(tmp_path / "rt")
    assert found is not None and found[0] == keys.public and found[1][0].decode() == keys.local_client
    (tmp_path / "link").symlink_to(tmp_path / "rt")
    with pytest.raises(proto.LocalKeysError, match="symbolic link"):
        proto.read_local_keys(tmp_path / "link")


def test_serve_raises_its_soft_open_file_limit_to_the_hard_one():
    """What keeps a flood of idle connections from pinning a core: libzmq spins on EMFILE at accept."""
    code = textwrap.dedent("""
        import json, resource
        from backend.commands import raise_open_file_limit
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        before, after = raise_open_file_limit()
        now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        print(json.dumps([before, after, now, hard if hard != resource.RLIM_INFINITY else -1]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    before, after, now, hard = json.loads(out.stdout.strip().splitlines()[-1])
    expected = min(hard, 1 << 20) if hard != -1 else 1 << 20
    assert before == min(256, expected) and after == now == expected
