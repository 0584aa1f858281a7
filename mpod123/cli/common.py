"""What every command group shares: the exit codes, the one place that maps errors to them, progress
bars, ``run_resumable``, the device choice, flags that are aliases of ``--set`` paths, and the registry
of other packages' command groups.

Exit codes (defined here only; every command group returns these):

* 0 ``EXIT_OK``: done;
* 1 ``EXIT_FAILURE``: a failure of ours (the traceback is printed), or a job or photo that failed;
* 2 ``EXIT_BAD_INPUT``: bad usage or bad input, i.e. an :class:`~mpod123.runtime.errors.Mpod123Error`
  (or a bare ``ValueError`` / ``FileNotFoundError``): one line on stderr that says what to change,
  never a traceback;
* 130 ``EXIT_INTERRUPTED``: Ctrl-C or SIGTERM (a checkpoint is kept where the command writes one).

Nothing heavy is imported here: building the parser loads no torch, zmq or bpy.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from ..runtime.errors import Mpod123Error

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

BAD_INPUT_ERRORS: tuple[type[BaseException], ...] = (Mpod123Error, ValueError, FileNotFoundError)
"""Exit 2. :class:`Mpod123Error` is the contract; a bare ``ValueError`` or ``FileNotFoundError`` (a
library's own argument check, a missing file opened by a library) is taken as bad input too."""

COMMAND_GROUP = "mpod123.commands"
"""Entry-point group through which other packages add commands (``backend``: serve, keys, client;
``blender_batch``: batch). Each entry point names a ``register(subparsers)`` function."""


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace, prog: str = "mpod123") -> int:
    """Run one command's function and turn how it ended into an exit code: the one place where
    errors become exit codes, for every command group."""
    warnings.filterwarnings("once")
    try:
        return func(args)
    except BAD_INPUT_ERRORS as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # anything else is a failure of ours: say so, with the details
        traceback.print_exc()
        print(f"{prog}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


# ------------------------------------------------------------------ other packages' commands
def command_groups() -> dict[str, metadata.EntryPoint]:
    """The installed ``mpod123.commands`` entry points by name (one per distribution, first on the path)."""
    return {ep.name: ep for ep in sorted(metadata.entry_points(group=COMMAND_GROUP), key=lambda ep: ep.name)}


def register_command_groups(sub: argparse._SubParsersAction) -> list[str]:
    """Add every registered group's commands to ``sub``; returns the names of those that could not be
    loaded (their package is missing), each with the reason."""
    missing = []
    for name, ep in command_groups().items():
        try:
            register = ep.load()
        except ImportError as exc:
            missing.append(f"{name} ({ep.value}: {exc})")
            continue
        register(sub)
    return missing


# ------------------------------------------------------------------ flags that are --set paths
class SetFlag(argparse.Action):
    """A flag that is another name for ``--set PATH=VALUE``: it appends the assignment to
    ``args.overrides`` and remembers the flag's name for messages (``args.setting_flags``). The value's
    checks are the setting's own (:data:`mpod123.config.overrides.SETTING_CHECKS`), never copied here."""

    def __init__(self, option_strings, dest, path: str, **kwargs) -> None:
        self.path = path
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        namespace.overrides = [*(getattr(namespace, "overrides", None) or []), f"{self.path}={values}"]
        flags = dict(getattr(namespace, "setting_flags", None) or {})
        flags[self.path] = option_string or self.option_strings[0]
        namespace.setting_flags = flags


def add_set_option(p: argparse.ArgumentParser, help_text: str) -> None:
    """``--set NAME=VALUE`` (repeatable), the one way to change a setting from the command line."""
    p.add_argument("--set", dest="overrides", action="append", metavar="NAME=VALUE", help=help_text)


def add_setting_flag(p: argparse.ArgumentParser, flag: str, path: str, help_text: str, *,
                     old_names: tuple[str, ...] = (), metavar: str = "N") -> None:
    """``flag VALUE``: the same as ``--set path=VALUE``. ``old_names`` are earlier spellings, still
    accepted but not shown in ``--help``."""
    p.add_argument(flag, action=SetFlag, path=path, dest=f"_flag_{path}", metavar=metavar,
                   help=f"{help_text} (the same as --set {path}=VALUE)", default=argparse.SUPPRESS)
    for old in old_names:
        p.add_argument(old, action=SetFlag, path=path, dest=f"_flag_{path}", metavar=metavar,
                       help=argparse.SUPPRESS, default=argparse.SUPPRESS)


def setting_labels(args: argparse.Namespace) -> dict[str, str]:
    """Setting path -> the flag the user gave it with (for messages that name what they typed)."""
    return dict(getattr(args, "setting_flags", None) or {})


# ------------------------------------------------------------------ progress
class ProgressPrinter:
    """A one-line-per-interval progress report on stderr, fed by stage events."""

    def __init__(self, every_s: float = 2.0, stream=None) -> None:
        self.every_s = every_s
        self.stream = stream or sys.stderr
        self._last = 0.0

    def __call__(self, event) -> None:
        from ..runtime.progress import Progress, StageDone

        now = time.monotonic()
        if isinstance(event, Progress) and (now - self._last >= self.every_s or event.step == event.total):
            self._last = now
            losses = " ".join(f"{k}={v:.4g}" for k, v in event.losses.items())
            eta = f" eta {event.eta_s:.0f}s" if event.eta_s is not None else ""
            print(f"[{event.stage}] {event.step}/{event.total} {losses}{eta}", file=self.stream, flush=True)
        elif isinstance(event, StageDone):
            print(f"[{event.stage}] done: {event.steps} steps in {event.seconds:.1f}s", file=self.stream, flush=True)


class StageBars:
    """One tqdm progress bar per stage (inversion, outline, detail), fed by stage events."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.bars: dict = {}

    def __call__(self, event) -> None:
        from tqdm import tqdm

        from ..runtime.progress import Progress, StageDone

        if isinstance(event, Progress):
            bar = self.bars.get(event.stage)
            if bar is None:
                bar = self.bars[event.stage] = tqdm(total=event.total, desc=event.stage, file=self.stream, unit="step",
                                                    dynamic_ncols=True, leave=True)
            bar.update(event.step - bar.n)
            if event.losses:
                bar.set_postfix({k: f"{v:.3g}" for k, v in list(event.losses.items())[:3]}, refresh=False)
        elif isinstance(event, StageDone):
            bar = self.bars.pop(event.stage, None)
            if bar is not None:
                bar.close()
            else:
                print(f"[{event.stage}] done in {event.seconds:.1f}s", file=self.stream, flush=True)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def run_resumable(bars: StageBars, workdir: Path, work: Callable[[], Any]):
    """``work()`` with its progress bars closed however it ends; on Ctrl-C, None after saying how
    to continue (the stages checkpoint, so the same command with ``--resume`` picks up)."""
    try:
        return work()
    except KeyboardInterrupt:
        bars.close()
        print(f"mpod123: interrupted; continue with the same command and --resume (work folder {workdir})",
              file=sys.stderr)
        return None
    finally:
        bars.close()


__all__ = [
    "BAD_INPUT_ERRORS", "COMMAND_GROUP", "EXIT_BAD_INPUT", "EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK",
    "ProgressPrinter", "SetFlag", "StageBars", "add_set_option", "add_setting_flag", "command_groups", "device",
    "register_command_groups", "run_command", "run_resumable", "setting_labels",
]
