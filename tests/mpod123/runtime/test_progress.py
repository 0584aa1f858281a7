from __future__ import annotations

import json
import threading

import pytest

from mpod123.runtime.progress import Cancelled, CancelToken, Preview, Progress, StageDone, to_dict


def test_cancel_token_raises_after_cancel_from_another_thread():
    token = CancelToken()
    token.raise_if_cancelled()
    t = threading.Thread(target=token.cancel, args=("user asked",))
    t.start()
    t.join()
    assert token.cancelled
    with pytest.raises(Cancelled, match="user asked"):
        token.raise_if_cancelled()


def test_events_serialise_to_json_without_png():
    p = to_dict(Progress("outline", 3, 10, {"ref_rgb": 0.5}, 1.5, 3.5))
    assert p["kind"] == "progress" and p["losses"] == {"ref_rgb": 0.5}
    v = to_dict(Preview("outline", 3, b"\x89PNG", 8, 4, 2))
    assert "png" not in v and v["kind"] == "preview"
    d = to_dict(StageDone("outline", 10, 2.0, None))
    assert json.loads(json.dumps(d))["kind"] == "stagedone"
