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


@pytest.fixture
def prefs(addon, server):
    """The add-on's preferences pointed at ``server`` (no local backend, no keys, a 10 s timeout), and put back
    afterwards: a test may disable and enable the add-on, which makes new preferences."""
    import bpy

    from blender_addon.blender.preferences import prefs as get_prefs

    def point_at_server():
        p = get_prefs(bpy.context)
        p.address = server.endpoint
        p.use_local_backend = False
        p.timeout_s = 10.0
        p.server_public_key = p.client_public_key = p.client_secret_key = ""
        return p

    p = point_at_server()
    bpy.context.window_manager.mpod123.last_error = ""
    yield p
    point_at_server()
