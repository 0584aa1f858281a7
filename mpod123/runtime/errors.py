"""The one base of every error a user can fix.

A library raises and never exits. Whatever a user can change (an input file, a
flag, a setting, a missing package or weights, a folder in use) raises a
subclass of :class:`Mpod123Error` whose message says what to change, and the
command line turns every one of them into one line on stderr and exit code 2
(``mpod123.cli.common.run_command``); anything else is a failure of ours and
keeps its traceback (exit 1).

Subclasses keep their older built-in base too (``class InputImageError(Mpod123Error,
ValueError)``), so code that caught the built-in still works. Pure Python: every
package may import it, and importing it loads nothing.
"""

from __future__ import annotations


class Mpod123Error(Exception):
    """Something the user can fix; the message says what to change."""


class UsageError(Mpod123Error, ValueError):
    """A command-line flag or argument that cannot be used as given (a value out of range, two
    flags that exclude each other)."""


class DeviceError(Mpod123Error, ValueError):
    """A ``--device`` that names no device of this machine."""


__all__ = ["DeviceError", "Mpod123Error", "UsageError"]
