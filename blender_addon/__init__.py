"""MPOD123 for Blender: one image in, a UV-unwrapped textured mesh out, from an MPOD123 backend.

This file only registers. The add-on is four layers that import only downward:

* ``core/``: plain Python, no bpy (the vendored protocol and client, the connection thread, the job file,
  the managed environment and its installer, the local backend process, the preview GLB reader, prompt
  rules, input checks, errors);
* ``blender/``: Blender data only (paths, context helpers, properties and the preferences' fields, inputs,
  extra views, candidates, previews, the importer, the texture target);
* ``session/``: the only mutable state, one ``Session`` (connection, jobs, events, the timer tick);
* ``ui/``: operators, panels and the preferences' drawing, which nothing imports.

The Blender modules are imported inside ``register`` so that ``import blender_addon.core.client`` works in
plain Python (no bpy needed).
"""

from __future__ import annotations


def _modules():
    from .blender import candidates, extra_views, properties
    from .ui import backend_ops, operators, panels, preferences, text_ops, texture_ops, views

    return (preferences, properties, candidates, extra_views, text_ops, operators, backend_ops, texture_ops, panels,
            views)


def register() -> None:
    from .session import loop

    for module in _modules():
        module.register()
    loop.register()  # a fresh session, load handlers, and a first update that rebuilds the job list


def unregister() -> None:
    from .session import loop

    loop.shutdown()
    for module in reversed(_modules()):
        module.unregister()
