"""MPOD123 for Blender: one image in, a UV-unwrapped textured mesh out, from an MPOD123 backend.

This file only registers. The pieces: ``preferences`` (server, keys, local
backend), ``properties`` (job state on the WindowManager), ``operators``
(thin), ``panels`` (draw only), ``client`` (bpy-free connection), ``bridge``
(applies backend events to Blender from a timer) and ``importer`` (GLB in).

The Blender modules are imported inside ``register`` so that
``import blender_addon.client`` works in plain Python (no bpy needed).
"""

from __future__ import annotations


def _modules():
    from . import operators, operators_backend, panels, preferences, properties

    return (preferences, properties, operators, operators_backend, panels)


def register() -> None:
    for module in _modules():
        module.register()


def unregister() -> None:
    from . import bridge

    bridge.shutdown()
    for module in reversed(_modules()):
        module.unregister()
