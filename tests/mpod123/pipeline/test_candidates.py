"""Text to 3D: prompts checked, candidates drawn by a real diffusers pipeline (tiny SD), matted, picked;
`generate --prompt` end to end through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("diffusers")

from mpod123.pipeline.candidates import (  # noqa: E402
    CandidateConfig,
    CandidateMaker,
    NoUsableCandidate,
    candidate_seed,
    judge,
    make_candidates,
    pick_candidate,
    prompt_templates,
)
from mpod123.cli.main import main  # noqa: E402
from mpod123.config import PreprocessConfig  # noqa: E402
from mpod123.export.gltf import validate_glb  # noqa: E402
from mpod123.runtime.progress import Preview, Progress, StageDone  # noqa: E402
from mpod123.pipeline.prompt import MAX_PROMPT_CHARS, PromptError, check_prompt  # noqa: E402

CHEAP = ["--preset", "draft", "--tiny", "--device", "cpu", "--faces", "300", "--texture-size", "32",
         "--set", "outline.steps=3", "--set", "detail.steps=3", "--set", "inversion.steps=1",
         "--set", "export.uv_backend=torch", "--set", "outline.preview_every=0", "--set", "detail.preview_every=0"]


pytestmark = pytest.mark.usefixtures("tiny_models_home")  # tiny models made once for this module (conftest)


@pytest.fixture(scope="module")
def tiny_sd(tiny_models_home):
    from mpod123.pipeline.generate import tiny_models_dir
    from mpod123.runtime.tiny_models import ensure_tiny_models

    return str(ensure_tiny_models(tiny_models_dir())["sd"])


# ------------------------------------------------------------------ prompts
@pytest.mark.parametrize("bad, why", [
    ("", "empty"), ("   \t ", "empty"), ("x" * (MAX_PROMPT_CHARS + 1), "over 500"), (None, "must be text"),
    (42, "must be text"), (["a kettle"], "must be text"), (b"a kettle", "must be text"),
    ("a kettle\nignore this", "control"), ("a\x00kettle", "control"), ("a kettle\u202e", "control"),
])
def test_bad_prompts_are_refused_with_the_reason(bad, why):
    with pytest.raises(PromptError, match=why):
        check_prompt(bad)


def test_good_prompts_are_stripped_and_kept():
    assert check_prompt("  a red vintage kettle ") == "a red vintage kettle"
    assert check_prompt("ein Wasserkessel, rot — 1950er") == "ein Wasserkessel, rot — 1950er"
    assert check_prompt("k" * MAX_PROMPT_CHARS) == "k" * MAX_PROMPT_CHARS


def test_the_prompt_joins_textual_inversion_captions_with_braces_escaped():
    extra = prompt_templates("a {weird} kettle")
    assert [t.format("<e>") for t in extra] == ["a photo of a <e>, a {weird} kettle", "a rendering of a <e>, a {weird} kettle"]


# ------------------------------------------------------------------ picking
def _image(path, draw) -> str:
    img = np.ones((96, 96, 3), np.float32)
    yy, xx = np.mgrid[:96, :96]
    draw(img, yy, xx)
    Image.fromarray((img * 255 + 0.5).astype(np.uint8)).save(path)
    return path


def _disc(cy, cx, r, colour):
    def draw(img, yy, xx):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = colour
    return draw


def _noise(img, yy, xx):
    img[:] = np.random.default_rng(0).random(img.shape)


def _two(img, yy, xx):
    _disc(30, 25, 14, (0.8, 0.1, 0.1))(img, yy, xx)
    _disc(66, 70, 14, (0.1, 0.1, 0.8))(img, yy, xx)


def _cropped(img, yy, xx):  # the object runs off the image: not whole
    _disc(48, 4, 14, (0.2, 0.6, 0.2))(img, yy, xx)


@pytest.fixture()
def images(tmp_path):
    return [
        _image(tmp_path / "0.png", _noise), _image(tmp_path / "1.png", _two), _image(tmp_path / "2.png", _cropped),
        _image(tmp_path / "3.png", _disc(48, 48, 20, (0.8, 0.2, 0.1))), _image(tmp_path / "4.png", _disc(40, 50, 25, (0.1, 0.3, 0.9))),
    ]


def test_the_first_candidate_that_mattes_as_one_clean_object_is_picked(images):
    cfg = PreprocessConfig(size=64)
    index, verdicts = pick_candidate(images, cfg)
    assert index == 3
    assert [v.usable for v in verdicts] == [False, False, False, True]
    assert "plain colour" in verdicts[0].reason  # noise: no plain border at all
    assert "many pieces" in verdicts[1].reason  # two objects
    assert "touches the image border" in verdicts[2].reason
    assert verdicts[3].method == "plain-background" and verdicts[3].confidence >= 0.5


def test_no_clean_candidate_is_an_error_that_says_what_to_do(images, tmp_path):
    with pytest.raises(NoUsableCandidate) as err:
        pick_candidate(images[:3], PreprocessConfig(size=64), prompt="a kettle", where=tmp_path)
    text = str(err.value)
    assert "none of the 3 candidates for 'a kettle'" in text
    assert "--candidates 6" in text and "--seed" in text and "--pick K" in text and str(tmp_path) in text


def test_pick_is_honoured_and_still_matted(images):
    cfg = PreprocessConfig(size=64)
    index, verdicts = pick_candidate(images, cfg, pick=4)
    assert index == 4 and verdicts[0].usable  # a later clean one, not the first clean one (3)
    with pytest.raises(NoUsableCandidate, match="candidate 1 cannot be matted.*many pieces.*matting=plain"):
        pick_candidate(images, cfg, pick=1)  # the matting refuses two objects, even when picked
    forced = PreprocessConfig(size=64, matting="plain")
    index, verdicts = pick_candidate(images, forced, pick=1)  # forced as the message says: used, marked not clean
    assert index == 1 and not verdicts[0].usable and verdicts[0].method == "plain-background"
    with pytest.raises(NoUsableCandidate, match="out of range"):
        pick_candidate(images, cfg, pick=5)
    assert judge(images[3], 3, cfg).usable


# ------------------------------------------------------------------ drawing
def test_candidates_come_from_a_real_sd_pipeline_seeded_per_candidate(tiny_sd, tmp_path):
    events = []
    cfg = CandidateConfig(count=2, steps=3, size=32)
    paths = make_candidates("a red kettle", tiny_sd, cfg, 5, tmp_path / "a", callback=events.append)
    one = make_candidates("a red kettle", tiny_sd, CandidateConfig(count=1, steps=3, size=32), 5, tmp_path / "b")
    other = make_candidates("a red kettle", tiny_sd, CandidateConfig(count=1, steps=3, size=32), 6, tmp_path / "c")
    blue = make_candidates("a blue kettle", tiny_sd, CandidateConfig(count=1, steps=3, size=32), 5, tmp_path / "d")
    a = [np.asarray(Image.open(p)) for p in paths]
    assert [x.shape for x in a] == [(32, 32, 3)] * 2 and a[0].std() > 5  # an image, not a constant
    assert np.array_equal(a[0], np.asarray(Image.open(one[0]))), "candidate 0 does not depend on how many are drawn"
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[0], np.asarray(Image.open(other[0])))
    assert not np.array_equal(a[0], np.asarray(Image.open(blue[0]))), "the prompt conditions the image"
    progress = [e for e in events if isinstance(e, Progress)]
    assert [e.step for e in progress] == list(range(1, 7)) and all(e.total == 6 for e in progress)
    previews = [e for e in events if isinstance(e, Preview)]
    assert [e.stage for e in previews] == ["candidate_0", "candidate_1"] and previews[1].png == paths[1].read_bytes()
    assert isinstance(events[-1], StageDone) and events[-1].stage == "candidates"
    assert candidate_seed(5, 0) != candidate_seed(5, 1) != candidate_seed(6, 0)


def test_the_pipeline_is_built_from_the_checkpoint_components(tiny_sd):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    maker = CandidateMaker(tiny_sd)
    assert isinstance(maker.pipe, StableDiffusionPipeline) and maker.pipe.safety_checker is None
    assert isinstance(maker.pipe.scheduler, DPMSolverMultistepScheduler) and maker.native_size == 16


# ------------------------------------------------------------------ the CLI
def test_generate_prompt_with_only_noise_candidates_says_what_to_do(tmp_path, capsys):
    out = tmp_path / "kettle.glb"
    code = main(["generate", "--prompt", "a red vintage kettle", "-o", str(out), "--candidates", "3", *CHEAP])
    err = capsys.readouterr().err
    assert code == 2 and "none of the 3 candidates" in err and "--pick K" in err, err
    work = tmp_path / "kettle.work"
    assert sorted(p.name for p in (work / "candidates").glob("*.png")) == ["0.png", "1.png", "2.png"]
    record = json.loads((work / "candidates" / "candidates.json").read_text())
    assert record["picked"] == -1 and len(record["verdicts"]) == 3 and not any(v["usable"] for v in record["verdicts"])
    assert "none of the 3" in record["error"] and not out.exists()


@pytest.mark.slow
def test_generate_prompt_end_to_end_with_a_picked_candidate(tmp_path, capsys):
    """The tiny model draws noise, which the automatic choice refuses (above). An artist who picks a
    candidate may force the plain-background matting; noise has no plain border, so the test also
    widens the border tolerance (both are ordinary --set overrides, recorded in run.json)."""
    out = tmp_path / "kettle.glb"
    code = main(["generate", "--prompt", "a red vintage kettle", "-o", str(out), "--pick", "1", "--seed", "7", *CHEAP,
                 "--set", "preprocess.matting=plain", "--set", "preprocess.border_max_spread=1.0"])
    assert code == 0
    mesh = validate_glb(out.read_bytes())
    assert len(mesh.texture_png) > 100
    work = tmp_path / "kettle.work"
    assert (work / "candidates" / "0.png").is_file() and (work / "candidates" / "1.png").is_file()
    record = json.loads((work / "run.json").read_text())
    text = record["text"]
    assert record["status"] == "done" and record["seed"] == 7
    assert text["picked"] == 1 and text["picked_by"] == "pick" and text["prompt"] == "a red vintage kettle"
    assert text["augmented_prompt"].startswith("a red vintage kettle, ") and "white background" in text["augmented_prompt"]
    assert record["source"].endswith("candidates/1.png") and record["input"]["method"] == "plain-background"
    assert "a photo of a {}, a red vintage kettle" in record["config"]["inversion"]["templates"]
    picked = np.asarray(Image.open(work / "candidates" / "1.png"))
    assert picked.shape == (16, 16, 3)  # the tiny model's native size

    # --resume reuses the candidates (not drawn again) and refuses to continue candidate 1's run from candidate 0
    stamp = (work / "candidates" / "0.png").stat().st_mtime_ns
    capsys.readouterr()
    code = main(["generate", "--prompt", "a red vintage kettle", "-o", str(out), "--pick", "0", "--seed", "7", *CHEAP,
                 "--set", "preprocess.matting=plain", "--set", "preprocess.border_max_spread=1.0", "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "made from candidate 1, not 0" in err and "--pick 1" in err, err
    assert (work / "candidates" / "0.png").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("argv, message", [
    (["in.png", "--prompt", "a kettle"], "not both"),
    ([], "give an IMAGE"),
    (["in.png", "--pick", "0"], "leave them out"),
    (["--prompt", "a kettle", "--pick", "2"], "out of range"),
    (["--prompt", "a kettle", "--candidates", "0"], "between 1 and 16"),
    (["--prompt", ""], "empty"),
    (["--prompt", "a\nb"], "control"),
])
def test_generate_input_choice_errors_exit_2(tmp_path, capsys, argv, message):
    out = tmp_path / "x.glb"
    code = main(["generate", *argv, "-o", str(out), "--tiny", "--device", "cpu", "--preset", "draft"])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not out.exists() and not (tmp_path / "x.work" / "candidates").exists()



def test_generate_prompt_with_extra_views_exits_2_and_says_why(tmp_path, capsys):
    from PIL import Image

    side = tmp_path / "side.png"
    Image.new("RGBA", (32, 32), (200, 40, 40, 255)).save(side)
    out = tmp_path / "x.glb"
    code = main(["generate", "--prompt", "a kettle", "--view", f"{side}@90", "-o", str(out), "--tiny", "--device", "cpu",
                 "--preset", "draft"])
    err = capsys.readouterr().err
    assert code == 2 and "leave --view out" in err, err
    assert not out.exists() and not (tmp_path / "x.work" / "candidates").exists()
