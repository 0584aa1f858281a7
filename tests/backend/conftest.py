"""Runtime folders for the service tests: the local keys a `serve` makes in its runtime folder are the ones
its clients must read.

A test gets a fresh, empty runtime folder of its own (an in-process server without CURVE then sees plain
clients), except a test that uses one of the module's long-lived servers (the fixtures ``server``, ``serve``,
``served``): that test and that server share the module's folder."""

from __future__ import annotations

import pytest

MODULE_SERVER_FIXTURES = ("server", "serve", "served")


@pytest.fixture(scope="module")
def module_runtime_dir(tmp_path_factory):
    """The runtime folder of a module's long-lived server (its fixture starts the server with it set)."""
    return tmp_path_factory.mktemp("runtime") / "rt"


@pytest.fixture(autouse=True)
def _own_runtime_dir(request, tmp_path_factory, monkeypatch):
    if any(name in request.fixturenames for name in MODULE_SERVER_FIXTURES):
        path = request.getfixturevalue("module_runtime_dir")
    else:
        path = tmp_path_factory.mktemp("runtime") / "rt"
    monkeypatch.setenv("MPOD123_RUNTIME_DIR", str(path))
