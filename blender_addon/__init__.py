"""MPOD123 for Blender: one image in, a UV-unwrapped textured mesh out, from an MPOD123 backend.

This file only registers. The pieces: ``preferences`` (server, keys, local
backend, import defaults), ``properties`` (the panel's state and job list on
the WindowManager), ``operators`` (thin), ``panels`` (draw only), ``client``
(bpy-free connection and its network thread), ``jobfile`` (bpy-free job file,
owner identity, cache limits), ``bridge`` (applies the network thread's
results to Blender from a timer) and ``importer`` (GLB in).

The Blender modules are imported inside ``register`` so that
``import blender_addon.core.client`` works in plain Python (no bpy needed).
"""

from __future__ import annotations


def _modules():
    from .blender import extra_views, preferences, properties, text_input, texture_mesh
    from .ui import operators, operators_backend, panels

    return (preferences, properties, text_input, operators, operators_backend, texture_mesh, panels, extra_views)


def register() -> None:
    from .session import bridge

    for module in _modules():
        module.register()
    bridge.register()  # load handlers, and a first update that rebuilds the job list from the job file


def unregister() -> None:
    from .session import bridge

    bridge.shutdown()
    for module in reversed(_modules()):
        module.unregister()
