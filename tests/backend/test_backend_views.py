"""Extra views over the backend: extra binary frames with their angles in options["views"].

Adversarial submits go to a real server on loopback (no executor: nothing runs, only what is stored is
checked); a whole job with two extra views runs through a real `mpod123 serve --tiny`.
"""

from __future__ import annotations

import io
import json
import math
import re

import pytest

zmq = pytest.importorskip("zmq")

from backend.kinds import view_frames  # noqa: E402
from backend.store import JobStore  # noqa: E402
from backend.server import Server, ServerConfig  # noqa: E402
from tests.backend_harness import Client, new_job_id  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 32
WEBP = b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 16


def test_pack_and_unpack_round_trip_and_a_plain_image_is_stored_as_before():
    assert view_frames.pack(PNG, []) == PNG
    assert view_frames.unpack(PNG) == (PNG, [])
    blob = view_frames.pack(PNG, [JPEG, WEBP])
    assert view_frames.unpack(blob) == (PNG, [JPEG, WEBP])
    with pytest.raises(view_frames.ViewFramesError, match="damaged"):
        view_frames.unpack(blob[:-1])
    with pytest.raises(view_frames.ViewFramesError, match="damaged"):
        view_frames.unpack(view_frames.CONTAINER_MAGIC + (999).to_bytes(4, "little"))


def test_job_views_become_view_specs_in_order():
    pytest.importorskip("torch")
    image, specs = view_frames.job_views(view_frames.pack(PNG, [JPEG, WEBP]), {"views": [{"azimuth": 180}, {"azimuth": -90, "polar": 80}]})
    assert image == PNG
    assert [(s.image, s.azimuth_deg, s.polar_deg) for s in specs] == [(JPEG, 180.0, None), (WEBP, -90.0, 80.0)]


@pytest.fixture
def front_door(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    server = Server(store, ServerConfig(bind="tcp://127.0.0.1:0", max_image_bytes=1 << 20))
    endpoint = server.start()
    client = Client(endpoint, session="artist")
    yield store, client
    client.close()
    server.stop()
    store.close()


def _submit(client, views, frames, image=PNG, job_id=None):
    return client.request("submit", {"options": {"steps": 1, **({"views": views} if views is not None else {})}},
                          [image, *frames], job_id=job_id or new_job_id())


BAD = {
    "one angle, two frames": ([{"azimuth": 90}], [PNG, PNG], "1 view"),
    "two angles, one frame": ([{"azimuth": 90}, {"azimuth": 180}], [PNG], "2 view"),
    "frames without angles": (None, [PNG], "no options"),
    "NaN azimuth": ([{"azimuth": math.nan}], [PNG], "finite"),
    "infinite polar": ([{"azimuth": 0, "polar": math.inf}], [PNG], "finite"),
    "huge azimuth": ([{"azimuth": 1e308}], [PNG], "in \\[-360, 360\\]"),
    "polar at the pole": ([{"azimuth": 0, "polar": 0}], [PNG], "in \\(0, 180\\)"),
    "string azimuth": ([{"azimuth": "90"}], [PNG], "number of degrees"),
    "boolean azimuth": ([{"azimuth": True}], [PNG], "number of degrees"),
    "missing azimuth": ([{"polar": 80}], [PNG], "number of degrees"),
    "unknown key": ([{"azimuth": 90, "radius": 9}], [PNG], "unknown keys"),
    "not a list": ({"azimuth": 90}, [PNG], "must be a list"),
    "entry not an object": ([90], [PNG], "must be an object"),
    "empty frame": ([{"azimuth": 90}], [b""], "empty"),
    "not an image": ([{"azimuth": 90}], [b"#!/bin/sh\nrm -rf ~\n"], "not a PNG"),
    "nine views, eight frames": ([{"azimuth": i} for i in range(9)], [PNG] * 8, "at most 8"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_views_are_refused_with_the_reason_and_nothing_is_stored(front_door, case):
    store, client = front_door
    views, frames, needle = BAD[case]
    reply = _submit(client, views, frames)
    assert reply.msg_type == "error" and reply.content["ename"] == "BadViews", reply.content
    assert re.search(needle, reply.content["evalue"]), reply.content
    assert reply.content["hint"]
    assert store.count() == 0
    # the server lives on and takes a good one
    assert _submit(client, [{"azimuth": 180}], [JPEG]).msg_type == "ack"


def test_more_frames_than_the_protocol_allows_are_refused_before_anything_is_copied(front_door):
    store, client = front_door
    reply = _submit(client, [{"azimuth": i} for i in range(9)], [PNG] * 9)
    assert reply.msg_type == "error" and reply.content["ename"] == "MessageTooLarge" and "frames" in reply.content["evalue"]
    assert store.count() == 0
    assert _submit(client, [{"azimuth": i * 40} for i in range(8)], [PNG] * 8).msg_type == "ack", "eight fit"


def test_views_together_are_bounded_by_the_message_limit(front_door):
    store, client = front_door
    big = PNG + b"\x00" * (900 << 10)  # each under the 1 MiB image limit, all together over limit + 2 MiB
    reply = _submit(client, [{"azimuth": 90}, {"azimuth": 180}, {"azimuth": 270}], [big, big, big], image=big)
    assert reply.msg_type == "error" and reply.content["ename"] == "MessageTooLarge"
    assert store.count() == 0


def test_views_are_stored_with_the_image_and_resubmits_are_idempotent(front_door):
    store, client = front_door
    views = [{"azimuth": 180}, {"azimuth": 90, "polar": 80}]
    job_id = new_job_id()
    first = _submit(client, views, [JPEG, WEBP], job_id=job_id)
    assert first.msg_type == "ack" and first.content["created"]
    again = _submit(client, views, [JPEG, WEBP], job_id=job_id)
    assert again.msg_type == "ack" and not again.content["created"], "the same images and angles: the same job"
    other = _submit(client, views, [WEBP, JPEG], job_id=job_id)
    assert other.msg_type == "error" and other.content["ename"] == "JobIdReused", "other views: another body"
    sid = store.get_owned(job_id, "session:artist").job_id
    assert view_frames.unpack(store.image(sid)) == (PNG, [JPEG, WEBP])
    plain = _submit(client, None, [])
    assert plain.msg_type == "ack"
    assert store.image(store.get_owned(plain.job_id, "session:artist").job_id) == PNG, "no views: stored as before"


# ------------------------------------------------------------------ a real job
@pytest.fixture(scope="module")
def serve(tmp_path_factory, module_runtime_dir):
    pytest.importorskip("diffusers")
    from tests.addon_backend import ServeProcess

    from tests.tiny_models import tiny_models_env

    proc = ServeProcess(tmp_path_factory.mktemp("serve-views"))
    with pytest.MonkeyPatch.context() as mp, tiny_models_env(tmp_path_factory.mktemp("tiny-models")):  # the server inherits it
        mp.setenv("MPOD123_RUNTIME_DIR", str(module_runtime_dir))  # the module's tests read the same keys
        proc.start(timeout_s=60)
        yield proc
        proc.stop()


def _object_png(eye) -> bytes:
    from PIL import Image

    from mpod123.bench.synthetic import render_object
    from tests.inputs import camera_at

    rgba = render_object(camera_at(eye, 64))[0].numpy()
    buf = io.BytesIO()
    Image.fromarray((rgba * 255 + 0.5).astype("uint8"), "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def test_a_tiny_job_with_two_extra_views_runs_them_and_returns_a_glb(serve, tmp_path):
    from backend.client import Client as BackendClient
    from mpod123.export.gltf import validate_glb

    front, back, left = _object_png((0, 0, 2.5)), _object_png((0, 0, -2.5)), _object_png((2.5, 0, 0))
    views = [{"azimuth": 180}, {"azimuth": 90, "polar": 90}]
    with BackendClient(serve.endpoint, session="artist", timeout_s=20) as client:
        job_id = client.submit(front, {"steps": 2, "views": views}, views=[back, left])
        final = client.wait(job_id, timeout_s=900)  # generous: a loaded 2-core machine
        assert final.content["kind"] == "done", (client.status(job_id), serve.log()[-2000:])
        mesh = validate_glb(client.fetch(job_id, tmp_path / "result.glb").read_bytes())
        assert mesh.texture_png
        # the worker framed each view and placed its camera (its run record, in the backend's data folder)
        records = [json.loads(p.read_text()) for p in serve.data.rglob("run.json")]
        record = next(r for r in records if r.get("views"))
        assert [(round(v["camera_azimuth_deg"]) % 360, round(v["camera_polar_deg"])) for v in record["views"]] == [
            (180, 90), (90, 90)]
        # a mismatched submit through the same client library is refused by the backend with the reason
        from backend.client import BackendError

        with pytest.raises(BackendError, match="BadViews"):
            client.submit(front, {"steps": 2, "views": views}, views=[back])
