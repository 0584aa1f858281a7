"""``mpod123 doctor`` and ``mpod123 models``: setting an environment up.

    mpod123 doctor [--json]                 what this environment can do
    mpod123 models list [--json]            the pipeline's weights: ready or not, size, where
    mpod123 models download [SOURCE ...] [--from FOLDER]
                                            get them, with a progress bar; resumable

Exit codes: 0 done, 1 a failure, 2 bad input or weights that cannot be
fetched (``ModelNotFound``, an :class:`~mpod123.runtime.errors.Mpod123Error`, which
``mpod123.cli.common.run_command`` maps to 2). torch is imported by ``doctor`` only.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from ..runtime.errors import UsageError
from .common import EXIT_OK


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .. import rendering  # noqa: F401  importing the accelerated layers registers their self-tests
    from ..runtime.doctor import collect, format_text

    report = collect(data=args.data, zero123=args.zero123, sd=args.sd, self_test=not args.no_self_test)
    print(json.dumps(report, indent=1) if args.json else format_text(report))
    return EXIT_OK


def _specs(args: argparse.Namespace):
    from ..runtime import weights as models

    specs = models.pipeline_models(args.zero123, args.sd)
    if getattr(args, "sources", None):
        by_source = {s.source: s for s in specs}
        chosen = []
        for source in args.sources:
            if source in by_source:
                chosen.append(by_source[source])
            elif source in ("zero123", "sd"):
                chosen.append(next(s for s in specs if s.role == source))
            else:
                raise UsageError(f"{source!r} is not one of the pipeline's models ({', '.join(by_source)}); "
                                 "name another with --zero123 or --sd")
        specs = chosen
    return specs


def _cmd_models_list(args: argparse.Namespace) -> int:
    from ..runtime import weights as models

    states = [models.status(s) for s in _specs(args)]
    if args.json:
        print(json.dumps([asdict(s) for s in states], indent=1))
        return EXIT_OK
    for s in states:
        size = (f"{s.bytes_on_disk / models.GB:.2f} GB at {s.path}" if s.ready
                else f"missing ({', '.join(s.missing)}); about {s.download_bytes / models.GB:.1f} GB to download")
        print(f"{s.role:<8} {s.source}: {'ready' if s.ready else 'not ready'}, {size}")
    print(f"cache: {models.hub_cache()}")
    return EXIT_OK


class _Bar:
    """A one-line progress bar on stderr."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr

    def __call__(self, p) -> None:
        frac = p.done_bytes / p.total_bytes if p.total_bytes else 1.0
        filled = int(30 * frac)
        self.stream.write(f"\r{p.name}: [{'#' * filled}{'.' * (30 - filled)}] {p.done_bytes / 1e9:.2f} / "
                          f"{p.total_bytes / 1e9:.2f} GB")
        if frac >= 1.0:
            self.stream.write("\n")
        self.stream.flush()


def _cmd_models_download(args: argparse.Namespace) -> int:
    from ..runtime import weights as models

    specs = _specs(args)
    if args.from_folder and len(specs) != 1:
        raise UsageError("--from copies one model: name it (e.g. `mpod123 models download sd --from /mirror/sd15`)")
    bar = models.throttled(_Bar(), 0.2)
    for spec in specs:
        if args.from_folder:
            folder = models.copy_from_folder(spec, Path(args.from_folder).expanduser(), bar)
        else:
            folder = models.ensure(spec, bar)
        print(f"{spec.role}: {spec.source} ready at {folder}")
    return EXIT_OK


def register(sub) -> None:
    doc = sub.add_parser("doctor", help="what this environment can do: torch build, device, accelerators, weights, disk")
    doc.add_argument("--json", action="store_true", help="print the report as JSON")
    doc.add_argument("--data", help="the backend's data folder (for its free disk; default: the current folder)")
    doc.add_argument("--zero123", help="Zero123 hub id or local folder (default: the pipeline's)")
    doc.add_argument("--sd", help="Stable Diffusion hub id or local folder (default: the pipeline's)")
    doc.add_argument("--no-self-test", action="store_true", help="skip the accelerators' parity self-tests")
    doc.set_defaults(func=_cmd_doctor)

    mod = sub.add_parser("models", help="the pipeline's weights: list what is here, download the rest")
    msub = mod.add_subparsers(dest="models", required=True)
    for name, helptext, func in (("list", "which weights are ready, their size and place", _cmd_models_list),
                                 ("download", "download the weights with a progress bar (resumable)", _cmd_models_download)):
        p = msub.add_parser(name, help=helptext)
        p.add_argument("sources", nargs="*", help="zero123, sd or a hub id among them (default: both)")
        p.add_argument("--zero123", help="Zero123 hub id or local folder (default: the pipeline's)")
        p.add_argument("--sd", help="Stable Diffusion hub id or local folder (default: the pipeline's)")
        p.set_defaults(func=func)
        if name == "list":
            p.add_argument("--json", action="store_true", help="print as JSON")
        else:
            p.add_argument("--from", dest="from_folder",
                           help="copy from a local folder holding the model (a mirror of the hub repository) "
                                "into the cache instead of downloading")
