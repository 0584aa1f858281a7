"""Fixtures shared by the add-on's tests in the real bpy module.

Both are module-scoped: each test module enables the add-on once in bpy's factory settings (and disables it
at its end, which must unregister every class) and, where it talks to a backend, starts its own
``mpod123 serve --tiny`` on a free loopback port, so modules never share Blender or backend state.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def addon(tmp_path_factory):
    """The enabled add-on's `session` package; the add-on is disabled, and checked unregistered, afterwards."""
    bpy = pytest.importorskip("bpy")
    from tests.addon_backend import enabled_addon

    with enabled_addon(tmp_path_factory.mktemp("addon-user")) as mod:
        assert mod is not None
        assert hasattr(bpy.types.WindowManager, "mpod123") and hasattr(bpy.types.WindowManager, "mpod123_text")
        from blender_addon import session

        yield session
    assert not hasattr(bpy.types.WindowManager, "mpod123")
    assert not hasattr(bpy.types.WindowManager, "mpod123_text")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real `mpod123 serve --tiny` on a free loopback port, stopped by its process id afterwards."""
    pytest.importorskip("zmq")
    from tests.addon_backend import ServeProcess

    proc = ServeProcess(tmp_path_factory.mktemp("backend"))
    proc.start()
    yield proc
    proc.stop()
