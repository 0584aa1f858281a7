"""Copies of the backend's standard protocol module and its DEALER client.

``build_addon.py`` refreshes them from ``backend/`` and refuses to build when
they differ; ``tests/blender_addon/test_addon_build.py`` checks they are identical. Edit the
originals in ``backend/``, never these.
"""

VENDORED = ("protocol.py", "client.py")
