"""Command-line commands of this package (registered by ``mpod123.cli``)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this package's commands to the ``mpod123`` parser."""
