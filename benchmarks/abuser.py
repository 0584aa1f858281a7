"""An unauthenticated peer that tries to make ``mpod123 serve`` hold memory (issue 30, item 4), and the
measure of what it costs the server: shared by ``bench_backend.py --abuse`` and the boundary tests.

Run as ``python -m benchmarks.abuser ENDPOINT MODE N MB [HOLD_S]``:
``frames`` sends one message of N frames of MB MiB, ``pipelined`` N messages of one MB MiB frame each,
never reading a reply; then it stays connected HOLD_S seconds and prints how many messages it sent.
Without authentication libzmq assembles whole messages before the server sees them, so only the
transport (CURVE with ZAP, on loopback too) can bound this.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` (VmRSS), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"process {pid} has no VmRSS")


def abuse(endpoint: str, mode: str, n: int, mb: int, hold_s: float) -> int:
    """Send what ``mode`` says and hold the connection; returns the messages sent (0 if refused at once)."""
    import zmq

    from backend import protocol
    from backend.protocol import Message

    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDTIMEO, 3000)
    s.setsockopt(zmq.RCVHWM, 1)
    s.connect(endpoint)
    frame = zmq.Frame(b"\0" * (mb << 20))
    head = protocol.encode(Message("hello", {"client": "x"}))
    sent = 0
    try:
        if mode == "frames":
            s.send_multipart([*head, *([frame] * n)], copy=False)
            sent = 1
        else:
            for _ in range(n):
                s.send_multipart([*head, frame], copy=False)
                sent += 1
    except zmq.Again:
        pass
    time.sleep(hold_s)
    s.close(0)
    ctx.term()
    return sent


def peak_growth_mb(server_pid: int, endpoint: str, mode: str, n: int, mb: int, env: dict, cwd: Path,
                   hold_s: float = 6.0) -> tuple[float, int]:
    """Run one abuser process against the server; (the server's peak VmRSS growth in MiB while it ran,
    messages the abuser sent)."""
    base = peak = rss_mb(server_pid)
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.abuser", endpoint, mode, str(n), str(mb), str(hold_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
    try:
        while proc.poll() is None:
            peak = max(peak, rss_mb(server_pid))
            time.sleep(0.05)
        out = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    sent = int(out.split()[-1]) if out.split() and out.split()[-1].isdigit() else 0
    return peak - base, sent


if __name__ == "__main__":
    endpoint, mode, n, mb = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if mode not in ("frames", "pipelined"):
        sys.exit(f"mode must be frames or pipelined, not {mode!r}")
    print(abuse(endpoint, mode, n, mb, float(sys.argv[5]) if len(sys.argv) > 5 else 6.0), flush=True)
