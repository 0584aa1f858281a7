"""``--device``: kept apart from :mod:`.common` because it loads torch, which the service's and the batch's
command lines (they import :mod:`.common`) never do."""

from __future__ import annotations


def device(name: str) -> str:
    """The torch device a ``--device`` names (``auto``: CUDA when torch sees a GPU, else the CPU)."""
    from ..runtime.devices import resolve_device  # loads torch: only when a command runs

    return str(resolve_device(name))
