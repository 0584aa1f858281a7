"""`mpod123 serve --tiny`: the real pipeline behind the real front door, with tiny random models."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time

import pytest
from PIL import Image

zmq = pytest.importorskip("zmq")
pytest.importorskip("diffusers")

from backend.client import Client  # noqa: E402
from backend.kinds.common import JobOptionsError, parse_options  # noqa: E402
from mpod123.export.gltf import validate_glb  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory, module_runtime_dir):
    data = tmp_path_factory.mktemp("serve")
    env = dict(os.environ, MPOD123_TINY_MODELS=str(tmp_path_factory.mktemp("tiny-models")), HF_HUB_OFFLINE="1",
               MPOD123_RUNTIME_DIR=str(module_runtime_dir))
    log = data / "serve.log"
    with open(log, "w") as out:  # a file, not a pipe nobody reads: a full pipe would block the server
        proc = subprocess.Popen(
            [sys.executable, "-m", "mpod123", "serve", "--tiny", "--bind", "tcp://127.0.0.1:0", "--data", str(data)],
            stdout=out, stderr=subprocess.STDOUT, text=True, env=env,
        )
    deadline = time.time() + 60
    match = None
    while match is None and time.time() < deadline and proc.poll() is None:
        match = re.search(r"on (tcp://\S+) .*job (\S+),", log.read_text())
        time.sleep(0.1)
    assert match and "tiny_pipeline_job" in match.group(2), log.read_text()
    yield match.group(1)
    proc.kill()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def photo() -> bytes:
    from mpod123.camera import orbit_cameras
    from mpod123.bench.synthetic import render_object

    rgba = render_object(orbit_cameras(90.0, 0.0, 2.5, 40.0, 96, 96))[0].numpy()
    buf = io.BytesIO()
    Image.fromarray((rgba * 255 + 0.5).astype("uint8"), "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def test_hello_reports_the_version_and_the_job(server):
    with Client(server, session="artist", timeout_s=20) as client:
        hello = client.hello()
    assert hello["version"] not in ("", None) and hello["gpu"] and "tiny_pipeline_job" in hello["job"]


def test_options_are_checked_before_anything_runs():
    assert parse_options({}, "fast") == ("fast", 0, None)
    assert parse_options({"preset": "draft", "seed": "4", "steps": 9}, "fast") == ("draft", 4, 9)
    for bad in ({"preset": "huge"}, {"seed": "x"}, {"steps": 0}):
        with pytest.raises(JobOptionsError):
            parse_options(bad, "fast")


def test_a_tiny_pipeline_job_streams_both_stages_and_returns_a_textured_glb(server, photo, tmp_path):
    with Client(server, session="artist", timeout_s=20) as client:
        job_id = client.submit(photo, {"steps": 6, "seed": 2})
        events = []
        final = client.wait(job_id, timeout_s=300, on_event=events.append)
        assert final.content["kind"] == "done", [e.content for e in events[-3:]]
        kinds = [(e.content["kind"], e.content.get("stage")) for e in events]
        for stage in ("outline", "detail"):
            assert ("preview", stage) in kinds and ("stage_done", stage) in kinds and ("progress", stage) in kinds
        assert ("progress", "inversion") in kinds
        previews = [e for e in events if e.content["kind"] == "preview"]
        assert all(Image.open(io.BytesIO(e.buffers[0])).size == (e.content["width"], e.content["height"]) for e in previews)
        assert all("checkpoint" not in e.content for e in events), "no server paths reach the client"
        seqs = [e.seq for e in events]
        assert seqs == list(range(1, seqs[-1] + 1))
        glb = client.fetch(job_id, tmp_path / "result.glb")
        mesh = validate_glb(glb.read_bytes())
        assert mesh.uvs is not None and mesh.texture_png and mesh.base_color_texture
        check_mesh_previews(client, job_id, events)


def check_mesh_previews(client, job_id, events) -> None:
    """Live 3D previews: each stage streams at least one, each a small GLB with vertex colours, and a
    client resuming from before one gets the same bytes again."""
    import trimesh

    meshes = [e for e in events if e.content["kind"] == "preview_mesh"]
    assert {e.content["stage"] for e in meshes} == {"outline", "detail"}
    for e in meshes:
        glb = e.buffers[0]
        assert len(glb) == e.content["bytes"] <= 300_000 and e.content["seconds"] > 0
        loaded = trimesh.load(io.BytesIO(glb), file_type="glb", force="mesh")
        assert len(loaded.vertices) == e.content["vertices"] > 0 and len(loaded.faces) == e.content["faces"] > 0
        assert loaded.visual.kind == "vertex" and loaded.visual.vertex_colors.shape == (len(loaded.vertices), 4)
    first = meshes[0]
    client.resume(job_id, first.seq - 1)
    again, deadline = [], time.time() + 30
    while not any(m.seq == first.seq for m in again) and time.time() < deadline:
        again += [m for m in client.drain() if m.job_id == job_id]
        time.sleep(0.05)
    replayed = next(m for m in again if m.seq == first.seq)
    assert replayed.content["kind"] == "preview_mesh" and replayed.buffers[0] == first.buffers[0]


def test_bad_images_and_options_fail_the_job_with_the_reason(server):
    with Client(server, session="artist", timeout_s=20) as client:
        bad_image = client.submit(b"\x89PNG not really", {"steps": 2})
        bad_option = client.submit(b"whatever", {"preset": "huge"})
        for job_id, reason in ((bad_image, "InputImageError"), (bad_option, "JobOptionsError")):
            final = client.wait(job_id, timeout_s=120)
            assert final.content["kind"] == "failed"
            assert reason in client.status(job_id)["error"]


def test_cancel_stops_a_running_pipeline_job(server, photo):
    with Client(server, session="artist", timeout_s=20) as client:
        job_id = client.submit(photo, {"steps": 400})
        deadline = time.time() + 120
        started = False
        while time.time() < deadline and not started:
            started = any(e.content["kind"] == "progress" for e in client.drain())
            time.sleep(0.05)
        assert started
        t0 = time.time()
        client.cancel(job_id)
        final = client.wait(job_id, timeout_s=60)
        assert final.content["kind"] == "cancelled" and time.time() - t0 < 15
