"""Ray executor vs local executor, in the same run: per-job dispatch overhead and event latency.

Both executors run the stand-in job (``backend.demo:demo_job``) behind a real
front door on loopback, through the real client:

* dispatch: submit -> first event and submit -> done for a job with one step
  and a 1 kB result, one job at a time (what a job costs beyond its own work);
* event latency: a job emits progress events every 10 ms, each stamped with
  the wall-clock time it was made; latency is the time until the client has it
  (worker -> store -> front door -> client; for Ray also actor -> stream);
* throughput: N one-step jobs submitted at once to two workers.

The Ray side uses an embedded local Ray started by this script (``--ray-cpus``).
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from backend.client import Client
from backend.store import JobStore
from backend.server import Server, ServerConfig
from backend.workers import ExecutorConfig, LocalExecutor

# `common` (and so torch) is imported in main() only: the local executor's spawned workers
# re-import this module, and a torch import there would be counted as dispatch overhead.


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _executor(kind: str, store: JobStore, data: Path, ray_cpus: int):
    cfg = ExecutorConfig(workers=2, job_fn="backend.demo:demo_job", poll_s=0.02)
    if kind == "ray":
        import ray

        from backend.ray_executor import RayConfig, RayExecutor

        if not ray.is_initialized():
            ray.init(address="local", num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False)
        return RayExecutor(store, data, cfg, RayConfig(num_gpus=0, namespace="mpod123-bench"))
    return LocalExecutor(store, data, cfg)


def run(kind: str, tmp: Path, n_dispatch: int, n_events: int, n_burst: int, ray_cpus: int) -> dict:
    store = JobStore(tmp / f"{kind}.sqlite")
    server = Server(store, ServerConfig(bind="tcp://127.0.0.1:0", max_jobs_per_client=10**6, max_queued_jobs=10**6))
    endpoint = server.start()
    executor = _executor(kind, store, tmp / f"data-{kind}", ray_cpus)
    executor.start()
    client = Client(endpoint, session="bench", timeout_s=60)
    try:
        one_step = {"steps": 1, "result_bytes": 1000}
        client.wait(client.submit(b"img", one_step), timeout_s=120)  # warm-up (imports, Ray workers)
        first, done = [], []
        for _ in range(n_dispatch):
            t0 = time.perf_counter()
            job_id = client.submit(b"img", one_step)
            seen: list[float] = []
            client.wait(job_id, timeout_s=120, on_event=lambda m: seen.append(time.perf_counter()))
            first.append(seen[0] - t0)
            done.append(time.perf_counter() - t0)
        latency = []
        job_id = client.submit(b"img", {"steps": n_events // 2, "step_s": 0.01, "stamp": True, "result_bytes": 1000})

        def on_event(m) -> None:
            if m.content.get("t_emit") is not None:
                latency.append(time.time() - m.content["t_emit"])

        client.wait(job_id, timeout_s=300, on_event=on_event)
        t0 = time.perf_counter()
        pending = {client.submit(b"img", one_step) for _ in range(n_burst)}
        while pending and time.perf_counter() - t0 < 600:
            for m in client.drain():
                if m.content.get("kind") == "done":
                    pending.discard(m.job_id)
            client.sock.poll(200)
        assert not pending, f"{len(pending)} burst jobs unfinished"
        burst_s = time.perf_counter() - t0
    finally:
        client.close()
        executor.stop(kill=True)
        server.stop()
        store.close()
    ms = 1000.0
    return {
        "executor": kind,
        "submit_to_first_event_ms_median": ms * statistics.median(first),
        "submit_to_done_ms_median": ms * statistics.median(done),
        "submit_to_done_ms_p90": ms * _pct(done, 0.9),
        "event_latency_ms_median": ms * statistics.median(latency),
        "event_latency_ms_p99": ms * _pct(latency, 0.99),
        "events_measured": len(latency),
        "burst_jobs": n_burst,
        "burst_s": burst_s,
        "burst_jobs_per_s": n_burst / burst_s,
    }


def main() -> None:
    from common import parser, report

    p = parser(__doc__)
    p.add_argument("--dispatch", type=int, default=20, help="one-step jobs, one at a time")
    p.add_argument("--events", type=int, default=400, help="stamped progress events")
    p.add_argument("--burst", type=int, default=20, help="one-step jobs submitted at once")
    p.add_argument("--ray-cpus", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(kind, Path(tmp), args.dispatch, args.events, args.burst, args.ray_cpus) for kind in ("local", "ray")]
    import ray

    machine = {"cpu_count": os.cpu_count(), "machine": platform.machine(), "ray": ray.__version__, "workers": 2}
    report("executors", {"benchmark": "executors", "machine": machine, "results": rows}, args.out)


if __name__ == "__main__":
    main()
