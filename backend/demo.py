"""A stand-in job for tests and ``serve --demo``: the pipeline's event pattern without the pipeline.

It reports progress for an outline and a detail stage, sends a real PNG
preview from each, honours cancellation between steps, and writes a result
GLB. By default that is a real textured mesh (the procedural test object,
UV-unwrapped, with a baked base-colour texture), so clients can import it;
with ``options["result_bytes"]`` it is a file of that many deterministic bytes
instead, for transfer tests and benchmarks. With
``options["step_s"]`` it sleeps that long per step, so tests can kill it
mid-job. ``options["fail_at"]`` makes it raise at that step, and
``options["ignore_cancel"]`` makes it deaf to cancel (so that the forced stop is tested);
``options["stamp"]`` adds the wall-clock time of each progress event (``t_emit``).

Like the pipeline, it leaves a checkpoint in its work folder after each stage
(``<stage>.done``) and skips finished stages when it runs again, saying so in
a log event: a re-queued job resumes rather than restarts.
"""

from __future__ import annotations

import hashlib
import io
import struct
import time
import zlib

from .workers import JobContext


def _png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour PNG, written with the standard library."""
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    buf = io.BytesIO()
    buf.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return buf.getvalue()


def demo_job(ctx: JobContext) -> str:
    steps = int(ctx.options.get("steps", 4))
    step_s = float(ctx.options.get("step_s", 0.0))
    fail_at = ctx.options.get("fail_at")
    for stage, colour in (("outline", (200, 80, 40)), ("detail", (40, 80, 200))):
        checkpoint = ctx.workdir / f"{stage}.done"
        if checkpoint.exists():
            ctx.emit("log", {"text": f"resumed: stage {stage} was already done"})
            continue
        for step in range(1, steps + 1):
            if not ctx.options.get("ignore_cancel"):
                ctx.check_cancel()
            if fail_at is not None and int(fail_at) == step and stage == "outline":
                raise RuntimeError(f"demo failure at step {step}")
            if step_s:
                time.sleep(step_s)
            progress = {"stage": stage, "step": step, "total": steps, "losses": {"demo": 1.0 / step}}
            if ctx.options.get("stamp"):
                progress["t_emit"] = time.time()  # for latency benchmarks
            ctx.emit("progress", progress)
        ctx.emit("preview", {"stage": stage, "step": steps, "width": 8, "height": 4}, _png(8, 4, colour))
        checkpoint.write_text(f"{stage} finished after {steps} steps\n")
        ctx.emit("stage_done", {"stage": stage, "steps": steps})
    out = ctx.workdir / "result.glb"
    if "result_bytes" not in ctx.options:
        return _textured_glb(out)
    size = int(ctx.options["result_bytes"])
    with open(out, "wb") as f:
        block = pattern_block(ctx.client_id or ctx.job_id)
        for start in range(0, size, len(block)):
            f.write(block[: min(len(block), size - start)])
    return str(out)


def pattern_block(job_id: str) -> bytes:
    """64 KiB derived from the job id: a ``result_bytes`` result is this block repeated, so a
    test can tell one job's result from another's."""
    seed = hashlib.sha256(job_id.encode()).digest()
    return (seed * (65536 // len(seed) + 1))[:65536]


def _textured_glb(out) -> str:
    """The procedural test object as a small textured GLB (imports torch, so only in the worker)."""
    from mpod123.config import ExportConfig
    from mpod123.export import export_mesh
    from mpod123.bench.synthetic import object_albedo, object_mesh

    export_mesh(object_mesh(24), object_albedo, out, ExportConfig(texture_size=128, uv_backend="torch", obj=False))
    return str(out)
