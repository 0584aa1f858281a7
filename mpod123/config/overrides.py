"""Dotted overrides of the typed config (``--set detail.sdf_lr=1e-3``) and recorded configs.

Tuning on a GPU should need no code change: every knob is a dataclass field, so
``a.b.c=value`` names one, the value is parsed as JSON when it parses (numbers,
true/false, null, lists) and as a plain string otherwise, and it is checked
against the field's type, and by the setting's own check in :data:`SETTING_CHECKS`, before the run
starts. Command-line flags such as ``--faces`` are other names for these paths, so each check lives
here once. Groups that are not part of :class:`PipelineConfig` (the text-to-3D ``candidates``) are
reached the same way when the command passes them in ``groups``. ``load_config`` reads the
``config`` of a ``run.json`` (or a bare config dict), so a recorded run can be
repeated exactly.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..runtime.errors import Mpod123Error
from . import PipelineConfig, from_dict


class OverrideError(Mpod123Error, ValueError):
    """An override that names no field or whose value does not fit it; the message says which."""


def _fields(obj: Any) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the type ``hint`` wants, or OverrideError."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise OverrideError(f"{where} must be one of {', '.join(map(repr, typing.get_args(hint)))}, not {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except OverrideError as exc:
                errors.append(str(exc))
        raise OverrideError(errors[0] if errors else f"{where}: cannot use {value!r}")
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise OverrideError(f"{where} takes a list such as [45, 135], not {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise OverrideError(f"{where} takes {len(args)} values, not {len(value)}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if hint is bool:
        if not isinstance(value, bool):
            raise OverrideError(f"{where} takes true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise OverrideError(f"{where} takes an integer, not {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OverrideError(f"{where} takes a number, not {value!r}")
        return float(value)
    if hint is str:
        return value if isinstance(value, str) else json.dumps(value)
    if dataclasses.is_dataclass(hint):
        raise OverrideError(f"{where} is a group of settings; set one of its fields ({', '.join(_fields(hint))})")
    raise OverrideError(f"{where}: unsupported field type {hint!r}")


def _face_budget(value: int | None, where: str) -> int | None:
    if not value:  # 0 or null: keep every face
        return None
    if value < 4:
        raise OverrideError(f"{where} must be at least 4 (or 0 for the full mesh), got {value}")
    return value


def _between(low: float, high: float) -> Callable[[Any, str], Any]:
    def check(value: Any, where: str) -> Any:
        if not low <= value <= high:
            raise OverrideError(f"{where} must be between {low} and {high}, got {value}")
        return value

    return check


SETTING_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "export.target_faces": _face_budget,
    "export.texture_size": _between(16, 8192),
}
"""Setting path -> its range check (value, how the user named it) -> the value to store. The type
check comes from the field's annotation; these add what a type cannot say."""


def apply_override(cfg: Any, assignment: str, label: str | None = None,
                   groups: Mapping[str, Any] | None = None) -> None:
    """Apply one ``a.b.c=value`` to the config dataclass ``cfg`` in place (or to ``groups[a]`` when
    ``a`` names one of those). ``label`` is how the user gave it (``--faces``) for the messages."""
    if "=" not in assignment:
        raise OverrideError(f"--set {assignment!r}: write it as name=value, e.g. detail.sdf_lr=1e-3")
    path, _, text = assignment.partition("=")
    path = path.strip()
    names = path.split(".")
    where = label or f"--set {path}"
    target = cfg
    if groups and names[0] in groups and names[0] not in _fields(cfg):
        target, names = groups[names[0]], names[1:]
    for depth, name in enumerate(names):
        fields = _fields(target)
        if name not in fields:
            here = ".".join(names[:depth]) or type(target).__name__
            others = sorted(fields) + (sorted(groups or ()) if target is cfg else [])
            raise OverrideError(f"--set {path}: {here} has no field {name!r} (it has {', '.join(others)})")
        if depth == len(names) - 1:
            hint = typing.get_type_hints(type(target))[name]
            value = _coerce(_parse(text.strip()), hint, where)
            check = SETTING_CHECKS.get(path)
            setattr(target, name, check(value, where) if check else value)
        else:
            target = getattr(target, name)
            if not dataclasses.is_dataclass(target):
                raise OverrideError(f"--set {path}: {'.'.join(names[: depth + 1])} is a value, not a group")


def apply_overrides(cfg: PipelineConfig, assignments: list[str] | tuple[str, ...],
                    labels: Mapping[str, str] | None = None, groups: Mapping[str, Any] | None = None) -> PipelineConfig:
    """Apply every override in order and record them in ``cfg.overrides`` (written to run.json).
    ``labels``: setting path -> the flag it was given with; ``groups``: settings outside ``cfg``."""
    labels = labels or {}
    for assignment in assignments:
        apply_override(cfg, assignment, labels.get(assignment.partition("=")[0].strip()), groups)
    cfg.overrides = tuple(cfg.overrides) + tuple(assignments)
    return cfg


def load_config(path: str | Path) -> PipelineConfig:
    """The PipelineConfig recorded in a run.json (its ``config``), or a bare config JSON."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise OverrideError(f"no config file at {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise OverrideError(f"cannot read {path} as JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    if not isinstance(data, dict):
        raise OverrideError(f"{path} holds no configuration (expected a run.json or a config object)")
    try:
        return from_dict(PipelineConfig, data)
    except (TypeError, ValueError) as exc:
        raise OverrideError(f"{path} does not match this version's configuration: {exc}") from None


__all__ = ["SETTING_CHECKS", "OverrideError", "apply_override", "apply_overrides", "load_config", "run_config"]


def run_config(preset: str, seed: int | None, config_path: str | None, assignments: list[str],
               labels: Mapping[str, str] | None = None, groups: Mapping[str, Any] | None = None) -> PipelineConfig:
    """The config a ``generate`` command asks for: the recorded ``config_path`` or the preset, the
    seed when given (else the recorded one, else 0), then the overrides (see :func:`apply_overrides`)."""
    from . import pipeline_preset

    cfg = load_config(config_path) if config_path else pipeline_preset(preset)
    cfg.with_seed(seed if seed is not None else (cfg.seed if config_path else 0))
    return apply_overrides(cfg, assignments, labels, groups)
