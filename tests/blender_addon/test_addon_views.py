"""The add-on's extra view slots in the real bpy module, sent with Generate to a real `mpod123 serve --tiny`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy")
pytest.importorskip("zmq")
pytest.importorskip("diffusers")

from tests.addon_live import addon_session, draw_panels, reset_jobs, settle, wm_state  # noqa: E402

from tests.mpod123.pipeline.test_views import photo  # noqa: E402


def test_the_extra_views_panel_draws_into_a_real_layout():

    res, problems = draw_panels()
    assert res["errors"] == [] and problems == "", (res["errors"], problems)
    assert res["extra_views"] == ["extra view 2 has no image: pick one or remove the slot", 2]


def _slots():
    return bpy.context.window_manager.mpod123_views


def test_slots_are_added_removed_and_an_empty_one_blocks_generate_with_the_reason(prefs, tmp_path):
    reset_jobs()
    st = wm_state()
    _slots().clear()
    main = tmp_path / "front.png"
    main.write_bytes(photo("front", 64))
    st.source, st.filepath = "FILE", str(main)
    assert bpy.ops.mpod123.generate.poll()
    assert bpy.ops.mpod123.remove_view.poll() is False
    assert bpy.ops.mpod123.add_view() == {"FINISHED"} and bpy.ops.mpod123.add_view() == {"FINISHED"}
    assert [s.azimuth for s in _slots()] == [180.0, 90.0], "suggested sides: behind, then the left"
    assert not bpy.ops.mpod123.generate.poll()
    with pytest.raises(RuntimeError, match="extra view 1 has no image"):
        bpy.ops.mpod123.generate()
    assert bpy.ops.mpod123.remove_view(index=0) == {"FINISHED"}
    assert [s.azimuth for s in _slots()] == [90.0]
    for _ in range(7):
        bpy.ops.mpod123.add_view()
    assert len(_slots()) == 8 and not bpy.ops.mpod123.add_view.poll(), "the backend takes at most 8"
    _slots().clear()
    assert bpy.ops.mpod123.generate.poll()


def test_generate_sends_the_slots_as_extra_views(prefs, server, tmp_path):
    session = addon_session()
    reset_jobs()
    st = wm_state()
    _slots().clear()
    paths = {}
    for side in ("front", "back", "left_above"):
        paths[side] = tmp_path / f"{side}.png"
        paths[side].write_bytes(photo(side, 64))
    st.source, st.filepath = "FILE", str(paths["front"])
    st.preset, st.seed, st.steps, st.random_seed = "draft", 0, 1, False
    for side, az, polar in (("back", 180.0, 90.0), ("left_above", 90.0, 80.0)):
        bpy.ops.mpod123.add_view()
        slot = _slots()[-1]
        slot.image = bpy.data.images.load(str(paths[side]))
        slot.azimuth, slot.polar = az, polar
    assert bpy.ops.mpod123.generate() == {"FINISHED"}
    job = st.jobs[0]
    inputs = Path(job.input_path).parent
    assert json.loads((inputs / f"{job.job_id}.views.json").read_text()) == [{"azimuth": 180.0, "polar": 90.0},
                                                                             {"azimuth": 90.0, "polar": 80.0}]
    assert (inputs / f"{job.job_id}.view0.img").read_bytes() == paths["back"].read_bytes(), "the slot's file, as is"

    # the backend's worker received both views with their angles and framed them
    found = []

    def views_arrived() -> bool:
        found[:] = [r for r in (json.loads(p.read_text()) for p in server.data.rglob("run.json")) if r.get("views")]
        return bool(found)

    settle(views_arrived, 180, "the worker's run record with the views")
    record = found[0]
    assert record is not None, server.log()[-2000:]
    assert [(round(v["camera_azimuth_deg"]) % 360, round(v["camera_polar_deg"])) for v in record["views"]] == [
        (180, 90), (90, 80)]
    settle(lambda: job.state in ("queued", "running", "done", "imported"), 30, "accepted by the backend")
    assert bpy.ops.mpod123.cancel(job_id=job.job_id) == {"FINISHED"}
    assert session.wait(bpy.context, job.job_id, timeout_s=60) in ("cancelled", "imported")
    _slots().clear()
