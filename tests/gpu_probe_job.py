"""A job function for the worker tests: reports which GPU its process was given."""

from __future__ import annotations

import os
import time


def report_gpu(ctx):
    ctx.emit("log", {"gpu": os.environ.get("CUDA_VISIBLE_DEVICES")})
    time.sleep(float(ctx.options.get("step_s", 0.0)))
    out = ctx.workdir / "r.bin"
    out.write_bytes(b"ok")
    return str(out)
