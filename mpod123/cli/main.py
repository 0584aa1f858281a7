"""The ``mpod123`` command line: the parser made of every command group, and ``main``.

This package's groups are one module each (``generate``, ``texture``, ``preprocess``, ``bench``,
``eval``, ``doctor`` / ``models``); other packages add theirs through the ``mpod123.commands``
entry points (``backend``: ``serve``, ``keys``, ``client``; ``blender_batch``: ``batch``), so this
package names none of them. Every command runs through :func:`mpod123.cli.common.run_command`, the
one place where errors become exit codes (listed in :mod:`mpod123.cli.common`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import bench, evaluation, generate, preprocess, setup, texture
from .common import COMMAND_GROUP, register_command_groups, run_command

GROUPS = (generate, bench, evaluation, setup, preprocess, texture)
"""This package's command groups, in ``--help`` order; each has ``register(subparsers)``."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mpod123", description="MPOD123: one image to a textured 3D asset")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    missing = register_command_groups(sub)
    if missing:
        parser.epilog = (f"Commands not loaded: {'; '.join(missing)}.")
    elif not any(name in sub.choices for name in ("serve", "batch")):
        parser.epilog = (f"The service and batch commands come through the {COMMAND_GROUP!r} entry points: "
                         "install the package (pip install -e .) to get them.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
