"""``mpod123 batch``, joined to the ``mpod123`` command line through the ``mpod123.commands`` entry
point ``batch`` (pyproject.toml).

Exit codes (``mpod123.cli.common``'s): 0 every photo is done (or was done before), 1 at least one photo
failed (the summary says why) or the backend could not be reached, 2 bad
arguments or an unusable folder, 130 interrupted (rerun the same command to
continue).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mpod123.cli.common import EXIT_FAILURE, EXIT_INTERRUPTED, run_command
from mpod123.runtime.errors import UsageError


def _job_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("photos", help="folder of photos (PNG, JPEG, WebP, ...); not searched recursively")
    p.add_argument("--out", required=True, help="assets folder: one .blend per photo, the catalog file and the manifest")
    p.add_argument("--server", help="a running backend (e.g. tcp://gpu-box:5555); default: start a local one")
    p.add_argument("--server-key", help="the server's public key file (turns on CURVE)")
    p.add_argument("--client-key", help="this client's .key_secret file (from `mpod123 keys init`)")
    p.add_argument("--preset", choices=["paper", "fast", "draft"],
                   help="the method's budget (default: fast; draft with --tiny)")
    p.add_argument("--seed", type=int, default=0, help="seed of every job (default 0)")
    p.add_argument("--steps", type=int, help="cap every stage's steps (quick looks)")
    p.add_argument("--job-option", action="append", type=_job_option, default=[], metavar="KEY=VALUE",
                   help="an extra job option (VALUE is JSON when it parses as JSON); repeatable")
    p.add_argument("--jobs", type=int, default=2, help="jobs in flight at a time (default 2)")
    p.add_argument("--catalog", default="MPOD123", help="asset catalog path, e.g. Products/Shoes (default MPOD123)")
    p.add_argument("--library", action="store_true", help="also write mpod123-library.blend linking every asset")
    p.add_argument("--retries", type=int, default=1, help="new attempts for a failed job (default 1)")
    p.add_argument("--tiny", action="store_true", help="the local backend runs tiny random models: for testing")
    p.add_argument("--job", help="the local backend's job function as module:function (default: the server's)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each answer of the backend")
    p.add_argument("--job-timeout", type=float, default=0.0, help="cancel and fail a job running longer (0: no limit)")
    p.add_argument("--preview-size", type=int, default=256, help="asset preview size in pixels (default 256)")
    p.add_argument("--preview-engine", choices=["cycles", "workbench"], default="cycles",
                   help="render engine of the preview (default cycles, on the CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (job lines and the summary remain)")


def config_from_args(args: argparse.Namespace):
    from .runner import BatchConfig

    return BatchConfig(
        photos=Path(args.photos), out=Path(args.out), server=args.server, server_key=args.server_key,
        client_key=args.client_key, preset=args.preset or ("draft" if args.tiny else "fast"), seed=args.seed,
        steps=args.steps, job_options=dict(args.job_option), jobs=args.jobs, catalog=args.catalog,
        library=args.library, retries=args.retries, tiny=args.tiny, job=args.job, timeout_s=args.timeout,
        job_timeout_s=args.job_timeout, preview_size=args.preview_size, preview_engine=args.preview_engine,
        progress=not args.no_progress,
    )


def cmd_batch(args: argparse.Namespace) -> int:
    from .runner import Batch, summary_table
    from .service import ServiceError

    if args.steps is not None and args.steps < 1:
        raise UsageError("--steps must be at least 1")
    from backend.client import BackendError, BackendTimeout

    batch = Batch(config_from_args(args))
    try:
        code = batch.run()  # a BatchError (bad arguments, an unusable folder) is a ValueError: exit 2
    except (ConnectionError, ServiceError, BackendError, BackendTimeout) as exc:
        if batch.outcomes:
            print(summary_table(batch.outcomes), flush=True)
        print(f"mpod123 batch: failed: {exc}; run the same command again to continue", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("mpod123 batch: interrupted; run the same command again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary_table(batch.outcomes), flush=True)
    return code


def register(sub: argparse._SubParsersAction) -> None:
    """Add this package's commands to the ``mpod123`` parser."""
    p = sub.add_parser("batch", help="a folder of photos to .blend assets (one object each), through the backend",
                       description="Convert every photo of a folder into a .blend asset: resumable, "
                                   "with a catalog, tags, a description and a rendered preview.")
    add_arguments(p)
    p.set_defaults(func=cmd_batch)


def main(argv: list[str] | None = None) -> int:
    """``python -m blender_batch``: the same command without the rest of the mpod123 CLI."""
    parser = argparse.ArgumentParser(prog="python -m blender_batch", description="a folder of photos to .blend assets")
    add_arguments(parser)
    return run_command(cmd_batch, parser.parse_args(argv), prog="mpod123 batch")
