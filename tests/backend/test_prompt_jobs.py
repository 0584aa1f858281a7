"""Prompt jobs (text to 3D) in the service: the front door's checks, and candidates-only, auto-pick and
image-from-a-prompt jobs through a real `mpod123 serve --tiny`."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

zmq = pytest.importorskip("zmq")
pytest.importorskip("diffusers")

from backend import protocol  # noqa: E402
from backend.client import BackendError, Client  # noqa: E402
from backend.kinds.prompt import check_submit, parse_prompt_options  # noqa: E402
from backend.protocol import ProtocolError  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 64

BAD_SUBMITS = [
    ({"prompt": ""}, [], "BadPrompt"),
    ({"prompt": "   "}, [], "BadPrompt"),
    ({"prompt": "k" * 501}, [], "BadPrompt"),
    ({"prompt": "k" * 100_000}, [], "BadPrompt"),
    ({"prompt": 42}, [], "BadPrompt"),
    ({"prompt": None}, [], "BadPrompt"),
    ({"prompt": ["a kettle"]}, [], "BadPrompt"),
    ({"prompt": {"text": "a kettle"}}, [], "BadPrompt"),
    ({"prompt": "a kettle\r\nrm -rf"}, [], "BadPrompt"),
    ({"prompt": "a kettle\x1b[2J"}, [], "BadPrompt"),
    ({"prompt": "a kettle"}, [PNG], "PromptAndImage"),
    ({"prompt": "a kettle"}, [b""], "PromptAndImage"),
    ({"prompt": "a kettle", "candidates": 0}, [], "BadOption"),
    ({"prompt": "a kettle", "candidates": 17}, [], "BadOption"),
    ({"prompt": "a kettle", "candidates": True}, [], "BadOption"),
    ({"prompt": "a kettle", "candidates": "4"}, [], "BadOption"),
    ({"prompt": "a kettle", "candidates": 2.5}, [], "BadOption"),
    ({"prompt": "a kettle", "candidates": 2, "pick": 2}, [], "BadOption"),
    ({"prompt": "a kettle", "pick": -1}, [], "BadOption"),
    ({"prompt": "a kettle", "candidates_only": "yes"}, [], "BadOption"),
    ({"prompt": "a kettle", "candidates_only": True, "pick": 0}, [], "BadOption"),
    ({"prompt": "a kettle", "prompt_for_inversion": "a kettle"}, [], "BadOption"),
    ({"candidates": 3}, [PNG], "BadOption"),
    ({"candidates_only": True}, [PNG], "BadOption"),
    ({"prompt_for_inversion": ""}, [PNG], "BadPrompt"),
    ({"prompt_for_inversion": 7}, [PNG], "BadPrompt"),
]


@pytest.mark.parametrize("options, buffers, ename", BAD_SUBMITS)
def test_the_front_door_refuses_bad_prompt_submits(options, buffers, ename):
    with pytest.raises(ProtocolError) as err:
        check_submit(options, buffers)
    assert err.value.ename == ename and err.value.hint


def test_good_submits_pass_and_say_which_kind():
    assert check_submit({"prompt": " a red kettle ", "candidates": 3, "candidates_only": True}, []) is True
    assert check_submit({"prompt": "a red kettle", "pick": 1, "candidates": 2}, []) is True
    assert check_submit({"preset": "draft"}, [PNG]) is False
    assert check_submit({"prompt_for_inversion": "a red kettle"}, [PNG]) is False
    opts = parse_prompt_options({"prompt": " a red kettle "})
    assert (opts.prompt, opts.candidates, opts.pick, opts.candidates_only) == ("a red kettle", 4, None, False)


def _frames(options, buffers):
    header = {"msg_id": "m", "msg_type": "submit", "version": protocol.SUPPORTED_VERSIONS[0], "session": "s",
              "job_id": "j1"}
    return [protocol.MAGIC, json.dumps(header).encode(), json.dumps({"options": options}).encode(), *buffers]


def test_the_protocol_lets_a_prompt_submit_go_without_an_image_frame():
    msg = protocol.decode(_frames({"prompt": "a kettle"}, []))
    assert msg.msg_type == "submit" and msg.buffers == []
    with pytest.raises(ProtocolError, match="binary frame"):
        protocol.decode(_frames({"preset": "draft"}, []))  # an image job still needs its frame


# ------------------------------------------------------------ a real server
@pytest.fixture(scope="module")
def served(tmp_path_factory, module_runtime_dir):
    from tests.addon_backend import ServeProcess
    from tests.tiny_models import tiny_models_env

    data = tmp_path_factory.mktemp("serve")
    proc = ServeProcess(data)
    with pytest.MonkeyPatch.context() as mp, tiny_models_env(tmp_path_factory.mktemp("tiny-models")):  # the server inherits it
        mp.setenv("MPOD123_RUNTIME_DIR", str(module_runtime_dir))  # the module's tests read the same keys
        proc.start(timeout_s=60)
        yield proc.endpoint, data
        proc.stop()


def test_bad_prompt_submits_over_the_wire_are_refused_and_store_nothing(served):
    address, _ = served
    with Client(address, session="artist", timeout_s=20) as client:
        for i, (options, buffers, ename) in enumerate(BAD_SUBMITS[:12]):
            with pytest.raises(BackendError) as err:
                client.request("submit", {"options": options}, buffers, job_id=f"bad-{i}")
            assert err.value.ename == ename, (options, err.value)
        with pytest.raises(BackendError) as err:
            client.request("submit", {"options": {"preset": "draft"}}, [], job_id="no-image")
        assert err.value.ename == "BadFrames"
        assert not [j for j in client.list_jobs() if j["job_id"].startswith(("bad-", "no-image"))]


def test_a_candidates_only_job_returns_previews_and_a_zip(served, tmp_path):
    address, _ = served
    with Client(address, session="artist", timeout_s=20) as client:
        job_id = client.submit(b"", {"prompt": "a red vintage kettle", "candidates": 3, "candidates_only": True, "seed": 4})
        events = []
        final = client.wait(job_id, timeout_s=300, on_event=events.append)
        assert final.content["kind"] == "done", [e.content for e in events[-3:]]
        previews = {e.content["stage"]: e.buffers[0] for e in events if e.content["kind"] == "preview"}
        assert sorted(previews) == ["candidate_0", "candidate_1", "candidate_2"]
        assert all(Image.open(io.BytesIO(png)).size == (16, 16) for png in previews.values())
        assert any(e.content["kind"] == "progress" and e.content["stage"] == "candidates" for e in events)
        assert not any(e.content.get("stage") in ("outline", "detail") for e in events), "no 3D stage runs"
        verdict_log = [e for e in events if e.content["kind"] == "log" and "verdicts" in e.content]
        assert len(verdict_log[0].content["verdicts"]) == 3
        result = client.fetch(job_id, tmp_path / "candidates.zip")
        with zipfile.ZipFile(result) as z:
            assert sorted(z.namelist()) == ["0.png", "1.png", "2.png", "candidates.json"]
            assert all(z.read(f"{i}.png") == previews[f"candidate_{i}"] for i in range(3))
            record = json.loads(z.read("candidates.json"))
        assert record["prompt"] == "a red vintage kettle" and record["seed"] == 4
        # the tiny model draws noise: the matting says so, candidate by candidate
        assert [v["usable"] for v in record["verdicts"]] == [False] * 3 and all(v["reason"] for v in record["verdicts"])
        again = client.submit(b"", {"prompt": "a red vintage kettle", "candidates": 3, "candidates_only": True, "seed": 4},
                              job_id=job_id)
        assert again == job_id  # idempotent resubmit of the same prompt job


def test_an_auto_pick_prompt_job_fails_with_what_to_do_when_no_candidate_is_clean(served):
    address, _ = served
    with Client(address, session="artist", timeout_s=20) as client:
        job_id = client.submit(b"", {"prompt": "a red vintage kettle", "candidates": 2, "steps": 2})
        final = client.wait(job_id, timeout_s=300)
        assert final.content["kind"] == "failed"
        assert final.content["ename"] == "NoUsableCandidate" and "none of the 2 candidates" in final.content["evalue"]


@pytest.mark.slow
def test_an_image_job_drawn_from_a_prompt_passes_the_prompt_to_textual_inversion(served, tmp_path):
    from mpod123.camera import orbit_cameras
    from mpod123.bench.synthetic import render_object

    address, data = served
    rgba = render_object(orbit_cameras(90.0, 0.0, 2.5, 40.0, 64, 64))[0].numpy()
    buf = io.BytesIO()
    Image.fromarray((rgba * 255 + 0.5).astype("uint8"), "RGBA").save(buf, format="PNG")
    with Client(address, session="artist", timeout_s=20) as client:
        job_id = client.submit(buf.getvalue(), {"steps": 2, "prompt_for_inversion": "a {red} vintage kettle"})
        final = client.wait(job_id, timeout_s=300)
        assert final.content["kind"] == "done", client.status(job_id)
    runs = [json.loads(p.read_text()) for p in Path(data, "jobs").glob("*/run/run.json")]
    templates = [r["config"]["inversion"]["templates"] for r in runs if r.get("status") == "done"]
    assert any("a photo of a {}, a {{red}} vintage kettle" in t for t in templates), templates
