"""Every service test gets a runtime folder of its own: the local keys a `serve` makes there are
found by that test's clients only (in-process servers without CURVE see plain clients)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _own_runtime_dir(tmp_path_factory, monkeypatch):
    import os

    if "MPOD123_RUNTIME_DIR" not in os.environ or not os.environ["MPOD123_RUNTIME_DIR"].startswith(
            str(tmp_path_factory.getbasetemp())):
        monkeypatch.setenv("MPOD123_RUNTIME_DIR", str(tmp_path_factory.mktemp("runtime") / "rt"))
