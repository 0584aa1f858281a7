"""`mpod123 serve` as a child process of a test, started the way a user starts it."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def start_serve(data, env, *extra, bind="tcp://127.0.0.1:0", umask=None) -> tuple[subprocess.Popen, str]:
    """Start `python -m mpod123 serve` on the demo job; the process and the endpoint from its banner.

    A warning line may come before the banner; a server that exits first fails the test with its output."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpod123", "serve", "--bind", bind, "--data", str(data),
         "--job", "backend.demo:demo_job", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
    )
    line, match = "", None
    for _ in range(5):
        line += proc.stdout.readline()
        match = re.search(r"backend on (tcp://\S+) ", line)
        if match or proc.poll() is not None:
            break
    if not match:
        proc.kill()
        rest = proc.communicate(timeout=10)[0]
        raise AssertionError(line + rest)
    return proc, match.group(1)
