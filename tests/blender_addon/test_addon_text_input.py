"""The add-on's Text input mode in the real bpy module against a real `mpod123 serve --tiny`: Make Candidates
brings the candidate images into Blender, Generate from Candidate sends the pick as an image job.

The tiny model draws noise, so the backend's matting marks every candidate as not clean and the job made from
a pick fails at the matting, with the matting's reason: that is what a real backend does with such an image.
"""

from __future__ import annotations

import io
import sys
import time

import pytest

bpy = pytest.importorskip("bpy")
pytest.importorskip("zmq")
pytest.importorskip("PIL")

from tests.addon_backend import JOB_TIMEOUT_S  # noqa: E402
from tests.addon_live import connect_addon, draw_panels, wm_state  # noqa: E402


@pytest.fixture
def connected(addon, prefs):
    """Connected to the module's server (the shared ``prefs`` point there), results imported on arrival."""
    prefs.auto_import = True
    connect_addon()
    return addon


def _text():
    return bpy.context.window_manager.mpod123_text


def _pixels(image) -> list[int]:
    """8-bit RGB rows top to bottom (Blender keeps them bottom-up, as floats)."""
    w, h = image.size
    px = list(image.pixels)
    rows = [px[(h - 1 - y) * w * 4:(h - y) * w * 4] for y in range(h)]
    return [round(row[x * 4 + c] * 255) for row in rows for x in range(w) for c in range(3)]


def test_polls_say_why_text_mode_cannot_send(addon):
    ts = _text()
    ts.mode, ts.prompt = "IMAGE", "a red vintage kettle"
    assert not bpy.ops.mpod123.make_candidates.poll()
    ts.mode = "TEXT"
    for bad in ("", "   ", "k" * 501, "a kettle\u0007"):
        ts.prompt = bad
        assert not bpy.ops.mpod123.make_candidates.poll(), bad
    ts.candidates.clear()
    assert not bpy.ops.mpod123.generate_from_candidate.poll()
    from blender_addon.core.prompt import name_for, prompt_problem

    assert prompt_problem("") and "over 500" in prompt_problem("k" * 501) and prompt_problem("a red kettle") == ""
    assert name_for("a red vintage kettle, shiny!") == "a_red_vintage_kettle"


def test_make_candidates_then_generate_from_the_picked_one(connected, server):
    session = connected
    st, ts = wm_state(), _text()
    st.jobs.clear()
    objects_before = set(bpy.data.objects)
    ts.mode, ts.prompt, ts.count = "TEXT", "a red vintage kettle", 2
    st.preset, st.seed, st.steps, st.random_seed = "draft", 3, 2, False
    assert bpy.ops.mpod123.make_candidates.poll()
    t0 = time.monotonic()
    assert bpy.ops.mpod123.make_candidates() == {"FINISHED"}
    assert time.monotonic() - t0 < 2.0, "the operator returns before the backend answers"
    job = st.jobs[-1]
    assert job.state == "sending" and job.kind == "candidates" and job.prompt == "a red vintage kettle"
    assert ts.job_id == job.job_id and len(ts.candidates) == 0

    assert session.wait(bpy.context, job.job_id, until=("done", "failed", "cancelled"), timeout_s=JOB_TIMEOUT_S) == "done", \
        (job.message, server.log()[-2000:])
    session.drain(bpy.context)
    assert sorted(r.index for r in ts.candidates) == [0, 1]
    from PIL import Image

    for row in ts.candidates:
        image = bpy.data.images[row.image_name]
        path = session.preview_path(job.job_id, f"candidate_{row.index}")
        sent = Image.open(path).convert("RGB")
        assert tuple(image.size) == sent.size == (16, 16)
        assert _pixels(image) == list(sent.tobytes()), "the Blender image holds the backend's candidate"
        assert not row.usable and row.verdict and row.verdict != "drawn", "the matting's verdict on noise"
    assert set(bpy.data.objects) == objects_before, "a candidates job imports nothing"
    assert job.state == "done" and "pick one" in job.message
    record = session.job_file().load()[job.job_id]
    assert record["kind"] == "candidates" and record["prompt"] == "a red vintage kettle" and record["candidates"] == 2

    ts.picked = 1
    assert not bpy.ops.mpod123.generate_from_candidate.poll(), "a candidate the matting rejected is not sent"
    with pytest.raises(RuntimeError, match="poll"):
        bpy.ops.mpod123.generate_from_candidate()
    assert st.jobs[-1].job_id == job.job_id, "no job queued"
    # as if the verdict had been clean: it is sent, and the backend's own check still refuses noise
    ts.candidates[1].usable, ts.candidates[1].verdict = True, "one clean object"
    assert bpy.ops.mpod123.generate_from_candidate.poll()
    assert bpy.ops.mpod123.generate_from_candidate() == {"FINISHED"}
    gen = st.jobs[-1]
    assert gen.job_id != job.job_id and gen.kind == "" and gen.prompt == "a red vintage kettle"
    with open(gen.input_path, "rb") as f:
        assert f.read() == open(session.preview_path(job.job_id, "candidate_1"), "rb").read()
    assert session.job_options(gen)["prompt_for_inversion"] == "a red vintage kettle"
    final = session.wait(bpy.context, gen.job_id, until=("done", "failed", "cancelled", "imported"), timeout_s=JOB_TIMEOUT_S)
    # noise is not one object on a plain background: the backend's matting refuses it and says why
    assert final == "failed" and "InputImageError" in gen.message and "background" in gen.message, gen.message


def test_candidate_previews_of_another_job_or_a_bad_stage_are_ignored(addon):
    from blender_addon.core.client import Message
    from PIL import Image

    st, ts = wm_state(), _text()
    st.jobs.clear()
    ts.candidates.clear()
    job = st.jobs.add()
    job.job_id, job.name, job.state, job.kind, job.prompt = "c" * 32, "kettle", "running", "candidates", "a kettle"
    other = st.jobs.add()
    other.job_id, other.name, other.state = "d" * 32, "photo", "running"
    ts.job_id = job.job_id
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buf, "PNG")
    png = buf.getvalue()
    for job_id, stage in ((job.job_id, "candidate_0"), (job.job_id, "candidate_../../x"), (job.job_id, "candidate_99"),
                          (other.job_id, "candidate_1")):
        addon.apply_event(bpy.context, Message("event", {"kind": "preview", "stage": stage, "step": 0, "width": 8,
                                                         "height": 8}, [png], job_id=job_id, seq=1))
    assert [r.index for r in ts.candidates] == [0] and bpy.data.images[ts.candidates[0].image_name].size[0] == 8
    addon.apply_event(bpy.context, Message("event", {"kind": "log", "text": "x", "verdicts": [
        {"index": 0, "usable": True}, {"index": "1", "usable": True}, "junk", {"index": 40, "usable": True}]},
        job_id=job.job_id, seq=2))
    assert [(r.index, r.usable) for r in ts.candidates] == [(0, True)] and ts.candidates[0].verdict == "one clean object"
    assert sys.modules["blender_addon.session"].job_options(other) == {"preset": "", "seed": 0}


def test_the_text_mode_draws_its_prompt_and_pick_list_in_a_real_layout():

    res, problems = draw_panels("--text")
    assert res["errors"] == [] and problems == "", (res["errors"], problems)
    assert "text_input" in res["drawn"] and "MPOD123_UL_candidates" in res["lists"]
    assert res["text"]["candidates"] == [[0, "MPOD123 candidate_0 cccccccc", False, "no object found"]]
    # a prompt and no address problem: Make Candidates may run; the pick arrived but the matting rejected it,
    # so Generate from Candidate is greyed (it would fail in the backend)
    assert res["text"]["polls"] == {"mpod123.make_candidates": True, "mpod123.generate_from_candidate": False}
