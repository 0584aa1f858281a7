"""Backend throughput on loopback: chunked result download vs a raw pyzmq send, submit-to-ack
latency, and event forwarding rate; each with and without CURVE.

``--abuse``: instead, the resident memory of a real ``mpod123 serve`` process (VmRSS from /proc,
sampled every 50 ms) while unauthenticated peers send it one message of ``--frames`` frames of
``--frame-mb`` MB, then ``--pipelined`` messages of ``--frame-mb`` MB that are never read. Run it
with PYTHONPATH pointing at another source tree to measure that tree's server the same way."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import zmq

from backend.client import Client
from backend.store import JobStore
from backend.security import CurveServerSecurity, init_keys, load_client_keys, load_public_key, load_server_keys
from backend.server import Server, ServerConfig
from abuser import peak_growth_mb, rss_mb
from common import parser, report


def _raw_send_seconds(ctx: zmq.Context, payload: bytes, curve: tuple | None) -> float:
    """The same bytes in one message over a fresh PUSH/PULL pair (the floor)."""
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    for s in (pull, push):
        s.setsockopt(zmq.LINGER, 0)
    if curve:
        server_public, server_secret, client_public, client_secret = curve
        pull.curve_secretkey, pull.curve_publickey, pull.curve_server = server_secret, server_public, True
        push.curve_serverkey, push.curve_publickey, push.curve_secretkey = server_public, client_public, client_secret
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push.connect(f"tcp://127.0.0.1:{port}")
    push.send(b"warm")
    pull.recv()
    t0 = time.perf_counter()
    push.send(payload, copy=False)
    pull.recv(copy=False)
    dt = time.perf_counter() - t0
    push.close(0)
    pull.close(0)
    return dt


def run(curve: bool, size: int, n_acks: int, n_events: int, tmp: Path) -> dict:
    ctx = zmq.Context()
    keys = tmp / f"keys-{curve}"
    security = None
    client_kw: dict = {}
    raw_curve = None
    if curve:
        init_keys(keys, "bench")
        server_keys = load_server_keys(keys)
        security = CurveServerSecurity(ctx, server_keys)
        client_public, client_secret = load_client_keys(keys / "bench.key_secret")
        client_kw = {"server_key": load_public_key(keys / "server.key"), "client_keys": (client_public, client_secret)}
        raw_curve = (server_keys.public, server_keys.secret, client_public, client_secret)
    store = JobStore(tmp / f"jobs-{curve}.sqlite")
    cfg = ServerConfig(bind="tcp://127.0.0.1:0", max_jobs_per_client=10**6, max_queued_jobs=10**6)
    server = Server(store, cfg, ctx, security.configure if security else None)
    endpoint = server.start()
    client = Client(endpoint, session="bench", timeout_s=60, context=ctx, **client_kw)
    client.hello()
    # a finished job with a result of `size` bytes, made directly in the store
    job_id = client.submit(b"img", {})
    sid = next(j.job_id for j in store.list() if j.client_id == job_id)  # the server's id of the job
    store.claim_next()
    result = tmp / f"result-{curve}.bin"
    payload = bytes(range(256)) * (size // 256)
    result.write_bytes(payload)
    import hashlib

    store.set_result(sid, str(result), hashlib.sha256(payload).hexdigest(), len(payload))
    store.set_state(sid, "done")
    # submit -> ack latency
    lat = []
    for _ in range(n_acks):
        t0 = time.perf_counter()
        client.submit(b"img", {}, job_id=uuid.uuid4().hex)
        lat.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    client.fetch(job_id, tmp / f"down-{curve}.bin", chunk=4 << 20, in_flight=4)
    fetch_s = time.perf_counter() - t0
    raw_s = _raw_send_seconds(ctx, payload, raw_curve)
    # event forwarding: events written to the store, received by the client
    ev_job = client.submit(b"img", {})
    ev_sid = next(j.job_id for j in store.list() if j.client_id == ev_job)
    client.drain()
    for i in range(n_events):
        store.append_event(ev_sid, "progress", {"step": i})
    t0 = time.perf_counter()
    got = 0
    while got < n_events:
        got += sum(1 for m in client.drain(1000) if m.job_id == ev_job)
        client.sock.poll(10)
    events_s = time.perf_counter() - t0
    client.close()
    server.stop()
    if security:
        security.stop()
    store.close()
    ctx.term()
    return {
        "curve": curve,
        "result_mb": size / 1e6,
        "chunked_fetch_s": fetch_s,
        "raw_pyzmq_send_s": raw_s,
        "fetch_over_raw": fetch_s / raw_s,
        "fetch_mb_per_s": size / 1e6 / fetch_s,
        "submit_ack_ms_median": 1000 * statistics.median(lat),
        "submit_ack_ms_p95": 1000 * sorted(lat)[int(0.95 * len(lat)) - 1],
        "events_per_s": n_events / events_s,
    }


ROOT = Path(__file__).resolve().parents[1]


def abuse(frames: int, pipelined: int, frame_mb: int, tmp: Path) -> dict:
    """Peak VmRSS growth of a serve process under the two unauthenticated abusers of issue 30."""
    env = {**os.environ, "MPOD123_RUNTIME_DIR": str(tmp / "runtime"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mpod123", "serve", "--bind", "tcp://127.0.0.1:0", "--data",
                             str(tmp / "data"), "--job", "backend.demo:demo_job"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        out = ""
        for _ in range(5):
            out += proc.stdout.readline()
            if m := re.search(r"backend on (tcp://\S+) ", out):
                break
        endpoint = m.group(1)
        time.sleep(1.0)
        base = rss_mb(proc.pid)
        row = {"base_mb": base}
        for mode, n in (("frames", frames), ("pipelined", pipelined)):
            growth, sent = peak_growth_mb(proc.pid, endpoint, mode, n, frame_mb, env, ROOT, hold_s=8.0)
            row[f"{mode}_sent"] = sent
            row[f"{mode}_peak_growth_mb"] = round(growth, 1)
            row[f"{mode}_after_mb"] = round(rss_mb(proc.pid) - base, 1)
        row["alive"] = proc.poll() is None
        return row
    finally:
        proc.kill()
        proc.wait(timeout=10)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--size-mb", type=int, default=100)
    p.add_argument("--acks", type=int, default=200)
    p.add_argument("--events", type=int, default=5000)
    p.add_argument("--abuse", action="store_true", help="measure serve's memory under unauthenticated abusers instead")
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--pipelined", type=int, default=150)
    p.add_argument("--frame-mb", type=int, default=50)
    args = p.parse_args()
    if args.abuse:
        with tempfile.TemporaryDirectory() as tmp:
            row = abuse(args.frames, args.pipelined, args.frame_mb, Path(tmp))
        report("backend_abuse", {"benchmark": "backend_abuse", "args": vars(args), "result": row}, args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(curve, args.size_mb * 1_000_000, args.acks, args.events, Path(tmp)) for curve in (False, True)]
    import os
    import platform

    report("backend", {"benchmark": "backend", "machine": {"cpu_count": os.cpu_count(), "machine": platform.machine(), "pyzmq": zmq.pyzmq_version(), "libzmq": zmq.zmq_version()}, "results": rows}, args.out)


if __name__ == "__main__":
    main()
