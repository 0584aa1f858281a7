"""Context helpers for code run from a timer: reporting to the user, redrawing, a window for operators."""

from __future__ import annotations

import bpy


def report(level: str, text: str) -> None:
    """Tell the user: Blender's report (Info editor, status bar) and the console."""
    print(f"MPOD123 {level.lower()}: {text}")
    try:
        bpy.ops.mpod123.report(level=level, message=text[:1000])
    except (AttributeError, RuntimeError, TypeError):
        pass  # not registered (scripts) or no usable context


def redraw(kinds=("VIEW_3D", "IMAGE_EDITOR")) -> None:
    wm = getattr(bpy.context, "window_manager", None)
    for window in getattr(wm, "windows", ()):
        screen = window.screen
        for area in getattr(screen, "areas", ()):
            if area.type in kinds:
                area.tag_redraw()


def window_override() -> dict:
    """A window (and a 3D View in it, if any) for operators run from a timer, whose context may have none."""
    if getattr(bpy.context, "window", None) is not None:
        return {}
    wm = bpy.context.window_manager
    for window in getattr(wm, "windows", ()):
        override = {"window": window, "screen": window.screen}
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                override["area"] = area
                override["region"] = next((r for r in area.regions if r.type == "WINDOW"), None)
                break
        return {k: v for k, v in override.items() if v is not None}
    return {}
