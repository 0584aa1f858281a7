"""`mpod123 serve` as a real process: SIGKILLed and restarted mid-job, and a load of 140 jobs from 15 clients."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

zmq = pytest.importorskip("zmq")

from backend.client import Client  # noqa: E402


def _start(data, bind="tcp://127.0.0.1:0"):
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpod123", "serve", "--bind", bind, "--data", str(data), "--job", "backend.demo:demo_job"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    line = ""
    for _ in range(5):  # a warning line may come first
        line += proc.stdout.readline()
        match = re.search(r"backend on (tcp://\S+) ", line)
        if match or proc.poll() is not None:
            break
    assert match, line + (proc.stdout.read() if proc.poll() is not None else "")
    return proc, match.group(1)


def test_a_sigkilled_server_restarts_and_the_job_completes_with_all_its_events(tmp_path):
    proc, endpoint = _start(tmp_path)
    try:
        client = Client(endpoint, session="alice", timeout_s=10)
        job_id = client.submit(b"\x89PNG img", {"steps": 30, "step_s": 0.05})
        deadline = time.time() + 30
        seen = []
        while not any(m.content["kind"] == "progress" for m in seen) and time.time() < deadline:
            seen += client.drain()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        time.sleep(0.5)  # its workers die with it
        proc, endpoint2 = _start(tmp_path, bind=endpoint)
        assert endpoint2 == endpoint
        client.resume(job_id)
        final = client.wait(job_id, timeout_s=60, on_event=seen.append)
        assert final.content["kind"] == "done"
        seqs = [m.seq for m in seen if m.job_id == job_id]
        assert seqs == list(range(1, seqs[-1] + 1)), "every event, once, in order, across the restart"
        assert client.status(job_id)["attempts"] == 2
        assert len(client.fetch(job_id, tmp_path / "r.glb").read_bytes()) > 0
        client.close()
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.parametrize(("kind", "n_clients", "n_jobs"), [("local", 15, 140), ("ray", 5, 20)])
def test_many_jobs_from_many_clients_all_finish_with_no_event_lost_or_repeated(tmp_path, kind, n_clients, n_jobs, request):
    """The load test: 140 jobs from 15 clients on the default local executor. On Ray each tiny job is an
    actor (about 2 s of a 2-core machine each: 270 s for 140, 98 s for 50 in CI), so Ray takes 20 from 5
    clients: the same interleaving of clients and jobs, on the executor the load test is not about."""
    from backend.store import JobStore
    from backend.server import Server, ServerConfig
    from backend.workers import ExecutorConfig, LocalExecutor

    store = JobStore(tmp_path / "jobs.sqlite")
    server = Server(store, ServerConfig(bind="tcp://127.0.0.1:0"))
    endpoint = server.start()
    cfg = ExecutorConfig(workers=2, poll_s=0.02)
    if kind == "ray":
        request.getfixturevalue("ray_runtime")
        from backend.ray_executor import RayConfig, RayExecutor

        executor = RayExecutor(store, tmp_path / "data", cfg, RayConfig(num_gpus=0, namespace="mpod123-tests"))
    else:
        executor = LocalExecutor(store, tmp_path / "data", cfg)
    executor.start()
    try:
        clients = [Client(endpoint, session=f"user{i}", timeout_s=20) for i in range(n_clients)]
        per, extra = divmod(n_jobs, n_clients)
        jobs = {c.session: [c.submit(b"img", {"steps": 2, "result_bytes": 256}) for _ in range(per + (i < extra))]
                for i, c in enumerate(clients)}
        assert sum(map(len, jobs.values())) == n_jobs
        deadline = time.time() + 900
        events: dict[str, list] = {}
        pending = {j for js in jobs.values() for j in js}
        while pending and time.time() < deadline:
            for c in clients:
                for m in c.drain():
                    events.setdefault(m.job_id, []).append(m)
                    if m.content["kind"] == "done":
                        pending.discard(m.job_id)
            time.sleep(0.05)
        assert not pending, f"{len(pending)} jobs unfinished"
        for session, job_ids in jobs.items():
            for job_id in job_ids:
                seqs = [m.seq for m in events[job_id]]
                job = store.get_owned(job_id, f"session:{session}")
                assert seqs == list(range(1, job.last_seq + 1)), job_id
        for c in clients:
            c.close()
    finally:
        executor.stop(kill=True)
        server.stop()
        store.close()
