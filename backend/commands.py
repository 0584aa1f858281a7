"""Command-line commands of the service: ``serve``, ``keys``, ``client``.

They live here, beside the code they drive, and join the ``mpod123`` command
line through the ``mpod123.commands`` entry point ``service`` (pyproject.toml),
so that the method package imports nothing of the service. Nothing heavy is
imported at module level: building the parser costs no zmq import.

Exit codes (``mpod123.cli.common``'s): 0 success, 1 a job failed or a service
thread stopped by itself (``serve``: a service manager should restart it), 2 bad
usage, a refused setting or an error answer from the backend (the message says
what to do), 130 interrupted.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from mpod123.cli.common import EXIT_FAILURE, EXIT_OK
from mpod123.runtime.errors import Mpod123Error

TINY_JOB = "backend.kinds.dispatch:tiny_pipeline_job"
"""The job ``serve --tiny`` runs."""


class ServiceRequestError(Mpod123Error):
    """A refused security setting, a request the job store refuses, an error answer from the backend,
    no answer in time, or an address or file the OS refuses: something the user can fix (the message
    says what)."""


def _clear_errors(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """The service's own errors become :class:`ServiceRequestError`, which ``mpod123.cli.common.run_command``
    turns into one line on stderr and exit code 2 (never a traceback). They cannot derive from
    :class:`Mpod123Error` themselves: the client module is copied into the add-on, and the server's
    modules load nothing of the method package."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        from .client import BackendError, BackendTimeout
        from .security import SecurityError
        from .store import JobStoreError

        try:
            return fn(args)
        except (SecurityError, JobStoreError, BackendError, BackendTimeout, OSError) as exc:
            raise ServiceRequestError(str(exc)) from exc

    return run


# ------------------------------------------------------------------ serve
def _gpu_names() -> list[str]:
    """NVIDIA GPU models from the driver's /proc entries (no CUDA initialisation in the server)."""
    root = Path("/proc/driver/nvidia/gpus")
    names = []
    for info in sorted(root.glob("*/information")) if root.is_dir() else []:
        for line in info.read_text(errors="replace").splitlines():
            if line.startswith("Model:"):
                names.append(line.split(":", 1)[1].strip())
    return names


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def raise_open_file_limit(cap: int = 1 << 20) -> tuple[int, int]:
    """Raise this process's soft limit on open files to its hard limit; returns (before, after).

    libzmq's listener retries ``accept`` at once when it fails with EMFILE, so a flood of idle
    connections past the soft limit (1,024 under most service managers) pins a core. With the soft
    limit at the hard one (4,096 to 1M on common systems) such a flood runs into the hard limit
    instead; connections beyond it still cost CPU (libzmq has no connection cap)."""
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return (0, 0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return (soft, target)
    return (soft, soft)


@_clear_errors
def cmd_serve(args: argparse.Namespace) -> int:
    import zmq

    from .store import JobStore
    from .kinds.common import ENV_MODELS
    from .security import (
        CurveServerSecurity, check_bind, check_bound, ensure_local_keys, load_server_keys, private_data_dir,
    )
    from .server import Server, ServerConfig, ServiceFailed, serve_forever
    from .workers import ExecutorConfig, LocalExecutor

    check_bind(args.bind, args.keys)
    raise_open_file_limit()
    for name, env in ENV_MODELS.items():  # the workers (spawned processes) read these
        if getattr(args, name, None):
            os.environ[env] = str(getattr(args, name))
    # the keys first: a refused runtime folder or key must stop the start before anything is made
    keys = load_server_keys(args.keys) if args.keys else ensure_local_keys()
    os.umask(0o077)  # everything serve and its workers write (database, inputs, previews, results) is 0600
    data, narrowed = private_data_dir(args.data)
    if narrowed:
        print(f"mpod123: {data} was open to other users; narrowed it to 0700 (its files to 0600)", file=sys.stderr)
    store = JobStore(data / "jobs.sqlite", max_attempts=args.max_attempts, busy_timeout_s=args.store_timeout, check=True)
    job_fn = TINY_JOB if args.tiny else args.job
    executor_cfg = ExecutorConfig(workers=args.workers, job_fn=job_fn, watchdog_s=args.watchdog, give_up_s=args.give_up,
                                  store_timeout_s=args.store_timeout)
    if args.executor == "ray":
        try:
            from .ray_executor import RayConfig, RayExecutor
        except ImportError as exc:
            raise ValueError(f"--executor ray needs Ray ({exc}); install it with: pip install 'mpod123[ray]'") from None
        gpus = args.ray_gpus if args.ray_gpus is not None else (0.0 if args.tiny else 1.0)
        ray_cfg = RayConfig(address=args.ray_address, num_gpus=gpus, num_cpus=args.ray_cpus, namespace=args.ray_namespace)
        executor = RayExecutor(store, data, executor_cfg, ray_cfg)
    else:
        executor = LocalExecutor(store, data, executor_cfg)
    recovered = executor.recover()  # a Ray executor reattaches to jobs still running on the cluster
    ctx = zmq.Context.instance()
    security = CurveServerSecurity(ctx, keys)  # local mode is CURVE too: nothing is accepted before ZAP
    info = {"gpu": ", ".join(_gpu_names()) or "cpu", "job": job_fn, "executor": args.executor}
    server = Server(store, ServerConfig(bind=args.bind, info=info, local_key=keys.local_client,
                                        require_loopback=not args.keys, key_allowed=security.allows), ctx,
                    security.configure)
    try:
        endpoint = server.start()
        check_bound(endpoint, args.keys)
    except RuntimeError as exc:
        security.stop()
        raise ValueError(str(exc)) from None
    executor.start()
    auth = "CURVE" if args.keys else "loopback, CURVE with this user's local keys"
    print(
        f"mpod123 backend on {endpoint} ({auth}), "
        f"{executor.workers} worker(s) on GPUs {executor.gpus or 'none'}, job {job_fn}, data in {data}; "
        f"{len(recovered)} interrupted job(s) recovered",
        flush=True,
    )
    code = EXIT_OK
    try:
        signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop is a clean stop too
        if args.keys and hasattr(signal, "SIGHUP"):  # a damaged key file keeps the last good list
            signal.signal(signal.SIGHUP, lambda *_: security.reload_allow_list())
        serve_forever(server, executor)
    except KeyboardInterrupt:
        pass
    except ServiceFailed as exc:
        print(f"mpod123: the backend stops: {exc}; restart it (a service manager does)", file=sys.stderr, flush=True)
        code = EXIT_FAILURE
    finally:
        security.stop()
        store.close()
    return code


# ------------------------------------------------------------------- keys
@_clear_errors
def cmd_keys_init(args: argparse.Namespace) -> int:
    from .security import init_keys, init_server_keys

    made = init_keys(args.keys_dir, args.client) if args.client else init_server_keys(args.keys_dir)
    for what, path in made.items():
        print(f"{what}: {path}")
    print(f"give clients {Path(args.keys_dir) / 'server.key'}; each makes its own pair with "
          f"`mpod123 keys client DIR --name NAME` and you add its NAME.key with `mpod123 keys allow {args.keys_dir} NAME.key`")
    return EXIT_OK


@_clear_errors
def cmd_keys_client(args: argparse.Namespace) -> int:
    from .security import make_client_keys

    made = make_client_keys(args.dir, args.name)
    print(f"secret (stays here): {made['client_secret']}")
    print(f"public (give it to the server's administrator): {made['client_public']}")
    return EXIT_OK


@_clear_errors
def cmd_keys_allow(args: argparse.Namespace) -> int:
    from .security import allow_client

    target = allow_client(args.keys_dir, args.public_key, args.name)
    print(f"allowed {target}; a running server picks it up on SIGHUP (kill -HUP PID)")
    return EXIT_OK


# ----------------------------------------------------------------- client
def _client_from_args(args: argparse.Namespace):
    from .client import Client
    from .security import SecurityError, load_client_keys, load_public_key

    if bool(args.server_key) != bool(args.client_key):
        raise SecurityError("CURVE needs both --server-key (the server's server.key) and --client-key "
                            "(this client's NAME.key_secret)")
    if args.server_key:
        return Client(args.server, args.session, args.timeout, load_public_key(args.server_key),
                      load_client_keys(args.client_key))
    return Client(args.server, args.session, args.timeout)


def _print_event(msg) -> None:
    print(json.dumps({"seq": msg.seq, **msg.content}), flush=True)


@_clear_errors
def cmd_client(args: argparse.Namespace) -> int:
    with _client_from_args(args) as client:
        if args.action == "submit":
            image = Path(args.image).read_bytes()
            try:
                options = json.loads(args.options) if args.options else {}
            except ValueError as exc:
                raise ValueError(f"--options is not JSON: {exc}") from None
            job_id = client.submit(image, options, job_id=args.job_id)
            print(job_id, flush=True)
            if args.wait:
                final = client.wait(job_id, timeout_s=args.wait_timeout, on_event=_print_event)
                return EXIT_OK if final.content["kind"] == "done" else EXIT_FAILURE
        elif args.action == "status":
            print(json.dumps(client.status(args.job_id), indent=1))
        elif args.action == "cancel":
            print(client.cancel(args.job_id))
        elif args.action == "fetch":
            if args.wait:
                st = client.status(args.job_id)
                if st["state"] not in ("done", "failed", "cancelled"):
                    client.resume(args.job_id, 0)
                    final = client.wait(args.job_id, timeout_s=args.wait_timeout)
                    if final.content["kind"] != "done":
                        print(f"mpod123: job {args.job_id} ended {final.content['kind']}: "
                              f"{final.content.get('evalue') or final.content.get('reason', '')}", file=sys.stderr)
                        return EXIT_FAILURE
            print(client.fetch(args.job_id, args.out or f"{args.job_id}.glb"))
        elif args.action == "list":
            print(json.dumps(client.list_jobs(), indent=1))
    return EXIT_OK


def _connection_flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--server", default="tcp://127.0.0.1:5555", help="the backend's address (default: the local one)")
    p.add_argument("--server-key", help="the server's public key file (turns on CURVE; needs --client-key)")
    p.add_argument("--client-key", help="this client's NAME.key_secret file (from `mpod123 keys client`)")
    p.add_argument("--session", help="a session name; only an in-process backend without CURVE (tests) files jobs under it")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each answer (default 10)")
    return p


def register(sub: argparse._SubParsersAction) -> None:
    """Add the service's commands to the ``mpod123`` parser."""
    srv = sub.add_parser("serve", help="run the backend: a ZeroMQ front door and local worker processes")
    srv.add_argument("--bind", default="tcp://127.0.0.1:5555", help="address to listen on (non-loopback needs --keys)")
    srv.add_argument("--workers", type=int, help="concurrent jobs (default: one per visible GPU, one without GPUs)")
    srv.add_argument("--data", default="mpod123-data", help="folder for the job database and results")
    srv.add_argument("--keys", help="CURVE keys folder from `mpod123 keys init`")
    srv.add_argument("--job", default="backend.kinds.dispatch:pipeline_job",
                     help="job function as module:function (default: the pipeline; backend.demo:demo_job is a stand-in)")
    srv.add_argument("--zero123", help="Zero-1-to-3 weights for the pipeline job: hub id or local folder")
    srv.add_argument("--sd", help="Stable Diffusion 1.x weights for the pipeline job: hub id or local folder")
    srv.add_argument("--embedding", help="a fixed <e> embedding file for every job (skips textual inversion)")
    srv.add_argument("--tiny", action="store_true",
                     help="run jobs with tiny random local models (no weights needed): for testing clients")
    srv.add_argument("--executor", default="local", choices=["local", "ray"], help="where jobs run (default: local processes)")
    srv.add_argument("--ray-address", help="join this Ray cluster, e.g. HOST:6379 (default: start an embedded local Ray)")
    srv.add_argument("--ray-gpus", type=float, help="GPUs per job on Ray (default 1; 0 with --tiny)")
    srv.add_argument("--ray-cpus", type=float, default=1.0, help="CPUs per job on Ray (default 1)")
    srv.add_argument("--ray-namespace", default="mpod123", help="Ray namespace of the job actors (one per front door)")
    srv.add_argument("--watchdog", type=float, default=600.0, help="fail a job silent for this many seconds")
    srv.add_argument("--max-attempts", type=int, default=2, help="runs of a job before a crash fails it")
    srv.add_argument("--store-timeout", type=float, default=30.0,
                     help="seconds to wait for a locked job database before an operation fails (default 30)")
    srv.add_argument("--give-up", type=float, default=120.0,
                     help="exit with code 1 (for a service manager to restart) when dispatching keeps failing "
                          "this many seconds (default 120)")
    srv.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="CURVE key management").add_subparsers(dest="keys", required=True)
    ki = keys.add_parser("init", help="create the server's key pair (once) and its empty allow-list")
    ki.add_argument("keys_dir", help="the server's keys folder (made 0700)")
    ki.add_argument("--client", help="also make a client pair NAME in this folder and allow it (one machine, one user)")
    ki.set_defaults(func=cmd_keys_init)
    kc = keys.add_parser("client", help="make this client's own key pair (only its public half goes to the server)")
    kc.add_argument("dir", help="folder for NAME.key and NAME.key_secret (made 0700)")
    kc.add_argument("--name", default="client", help="the key pair's name (default: client)")
    kc.set_defaults(func=cmd_keys_client)
    ka = keys.add_parser("allow", help="add a client's public key to the server's allow-list (then SIGHUP the server)")
    ka.add_argument("keys_dir", help="the server's keys folder")
    ka.add_argument("public_key", help="the client's NAME.key file")
    ka.add_argument("--name", help="the name on the allow-list (default: the file's name)")
    ka.set_defaults(func=cmd_keys_allow)

    cl = sub.add_parser("client", help="talk to a backend from scripts").add_subparsers(dest="action", required=True)
    flags = _connection_flags()
    s = cl.add_parser("submit", parents=[flags], help="queue a job for an image; prints its id")
    s.add_argument("image", help="PNG, JPEG or WebP file")
    s.add_argument("--options", help='job options as JSON, e.g. \'{"preset": "draft", "seed": 1}\'')
    s.add_argument("--job-id", help="choose the job id (a submit of the same id, image and options is the same job)")
    s.add_argument("--wait", action="store_true", help="print the job's events as JSON lines until it ends")
    s.add_argument("--wait-timeout", type=float, default=24 * 3600.0, help="give up waiting after this many seconds")
    s.set_defaults(func=cmd_client)
    for name, text in (("status", "print a job's state as JSON"), ("cancel", "cancel a job")):
        p = cl.add_parser(name, parents=[flags], help=text)
        p.add_argument("job_id", help="the id that submit printed")
        p.set_defaults(func=cmd_client)
    f = cl.add_parser("fetch", parents=[flags], help="download a job's result (resumable, sha256-checked)")
    f.add_argument("job_id", help="the id that submit printed")
    f.add_argument("-o", "--out", help="where to write the result (default: JOB_ID.glb)")
    f.add_argument("--wait", action="store_true", help="wait for the job to finish first")
    f.add_argument("--wait-timeout", type=float, default=24 * 3600.0, help="give up waiting after this many seconds")
    f.set_defaults(func=cmd_client)
    lst = cl.add_parser("list", parents=[flags], help="print every job of yours as JSON")
    lst.set_defaults(func=cmd_client)
