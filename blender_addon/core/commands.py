"""Command lines without a shell: splitting, filling in, the serve command, and a child's environment."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import EnvError

CREATE_NEW_PROCESS_GROUP = 0x00000200
"""Windows' creation flag (``subprocess.CREATE_NEW_PROCESS_GROUP``, spelled out so any OS can build the options)."""

def child_popen_options(windows: bool | None = None) -> dict:
    """A child in its own process group (POSIX session / Windows group), so it can be signalled as a whole."""
    windows = os.name == "nt" if windows is None else windows
    return {"creationflags": CREATE_NEW_PROCESS_GROUP} if windows else {"start_new_session": True}



def split_command(text: str, windows: bool | None = None) -> list[str]:
    """Split a command line into arguments without a shell.

    Double quotes group; on Windows a backslash is an ordinary character (so
    ``C:\\Users\\Jane Doe\\x.exe`` in quotes stays intact), elsewhere it escapes
    the next character as in a POSIX shell. Single quotes group on POSIX only.
    """
    windows = os.name == "nt" if windows is None else windows
    args: list[str] = []
    cur: list[str] = []
    have = False
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == quote:
                quote = ""
            elif c == "\\" and not windows and quote == '"' and i + 1 < len(text) and text[i + 1] in '"\\$`':
                i += 1
                cur.append(text[i])
            else:
                cur.append(c)
        elif c in "\"'" and (c == '"' or not windows):
            quote, have = c, True
        elif c == "\\" and not windows and i + 1 < len(text):
            i += 1
            cur.append(text[i])
            have = True
        elif c.isspace():
            if have or cur:
                args.append("".join(cur))
            cur, have = [], False
        else:
            cur.append(c)
            have = True
        i += 1
    if quote:
        raise EnvError(f"unbalanced quote in the command: {text}")
    if have or cur:
        args.append("".join(cur))
    return args


def expand_command(template: str, values: dict[str, str], windows: bool | None = None) -> list[str]:
    """A custom command as an argument list: split first, then fill ``{address}``, ``{data}``, ``{python}``.

    Filling after splitting means a value with spaces, quotes or backslashes
    stays one argument, exactly as given.
    """
    args = split_command(template, windows)
    if not args:
        raise EnvError("the local command is empty")
    out = []
    for arg in args:
        for key, value in values.items():
            arg = arg.replace("{" + key + "}", value)
        out.append(arg)
    return out


def serve_command(python: Path | str, address: str, data: Path | str, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The managed environment's backend: ``python -m mpod123 serve --bind ADDRESS --data DATA ...``."""
    return [str(python), "-m", "mpod123", "serve", "--bind", address, "--data", str(data), *extra]


def backend_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a backend started from Blender: Blender's own Python settings removed."""
    env = dict(os.environ if base is None else base)
    for key in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONNOUSERSITE"):
        env.pop(key, None)
    return env

