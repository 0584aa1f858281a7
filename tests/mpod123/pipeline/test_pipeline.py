"""The whole pipeline on the CPU with tiny random models: end to end, resume, cancel, bad input, determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")

from mpod123.cli.main import main  # noqa: E402
from mpod123.export import read_mesh  # noqa: E402
from mpod123.export.gltf import validate_glb  # noqa: E402
from mpod123.pipeline.generate import generate  # noqa: E402
from mpod123.runtime.progress import Cancelled, CancelToken, Preview, Progress, Result, StageDone  # noqa: E402
from tests.inputs import object_photo_jpeg, png_header_only  # noqa: E402
from tests.tiny_models import small_config  # noqa: E402


pytestmark = pytest.mark.usefixtures("tiny_models_home")  # tiny models made once for this module (conftest)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A photo-like JPEG: the procedural object rendered from the front on a slightly noisy plain backdrop."""
    return object_photo_jpeg(tmp_path_factory.mktemp("photo") / "object.jpg")


class Recorder:
    def __init__(self, stop_at=None):
        self.events = []
        self.stop_at = stop_at

    def __call__(self, event):
        self.events.append(event)
        if self.stop_at and self.stop_at(event):
            raise KeyboardInterrupt("stopped by the test")

    def of(self, kind, stage=None):
        return [e for e in self.events if isinstance(e, kind) and (stage is None or getattr(e, "stage", None) == stage)]


def test_generate_cli_draft_preset_end_to_end(photo, tmp_path):
    out = tmp_path / "result" / "object.glb"
    code = main(["generate", str(photo), "-o", str(out), "--preset", "draft", "--tiny", "--device", "cpu", "--seed", "3"])
    assert code == 0
    mesh = validate_glb(out.read_bytes())  # UVs, normals and a texture, or this raises
    assert mesh.uvs.shape[0] == mesh.positions.shape[0] and len(mesh.texture_png) > 100
    work = tmp_path / "result" / "object.work"
    record = json.loads((work / "run.json").read_text())
    assert record["status"] == "done" and record["seed"] == 3 and record["preset"] == "draft"
    assert record["config"]["outline"]["steps"] == 200 and record["config"]["detail"]["steps"] == 200
    assert {"torch", "diffusers", "transformers", "mpod123"} <= set(record["versions"])
    assert {"hash_grid", "ray_marching", "rasterizer", "uv"} <= set(record["backends"])
    assert {"preprocess", "outline", "inversion", "detail", "export", "total"} <= set(record["timings_s"])
    assert record["input"]["method"] == "plain-background"
    previews = sorted(p.name for p in (work / "previews").iterdir())
    assert any(p.startswith("outline_") for p in previews) and any(p.startswith("detail_") for p in previews)
    assert Image.open(work / "input.png").size == (128, 128) and (work / "mask.png").is_file()
    for stage in ("outline", "detail"):  # live 3D previews: a tenth of 200 steps apart, and the end
        glbs = [p for p in previews if p.startswith(f"{stage}_") and p.endswith(".glb")]
        assert glbs == [f"{stage}_{step:06d}.glb" for step in range(20, 201, 20)], glbs
        assert all(0 < (work / "previews" / p).stat().st_size <= 300_000 for p in glbs)
        assert record["mesh_previews"][stage]["count"] == 10 and record["mesh_previews"][stage]["seconds"] > 0


def test_events_cover_every_stage_and_runs_are_deterministic(photo, tmp_path):
    rec = Recorder()
    first = generate(photo, tmp_path / "a.glb", config=small_config(), tiny=True, device="cpu", seed=1, callback=rec)
    again = generate(photo, tmp_path / "b.glb", config=small_config(), tiny=True, device="cpu", seed=1)
    other = generate(photo, tmp_path / "c.glb", config=small_config(), tiny=True, device="cpu", seed=2)
    for stage in ("outline", "inversion", "detail"):
        steps = [e.step for e in rec.of(Progress, stage)]
        assert steps == list(range(1, len(steps) + 1)) and steps, stage
        assert all(e.eta_s is not None for e in rec.of(Progress, stage))
    assert rec.of(Preview, "outline") and rec.of(Preview, "detail")
    assert [e.stage for e in rec.of(StageDone)] == ["outline", "inversion", "detail", "export"]
    (result,) = rec.of(Result)
    assert result.path == str(first.glb) and result.sha256 == first.record["sha256"]
    a, b, c = (read_mesh(r.glb) for r in (first, again, other))
    assert torch.equal(a.vertices, b.vertices) and torch.equal(a.faces, b.faces), "same seed, same mesh"
    assert first.glb.read_bytes() == again.glb.read_bytes()
    assert a.vertices.shape != c.vertices.shape or not torch.equal(a.vertices, c.vertices), "the seed matters"


KILLABLE_RUN = """
import sys
from pathlib import Path
from mpod123.pipeline.generate import generate
from tests.tiny_models import small_config
generate(Path(sys.argv[1]), Path(sys.argv[2]), config=small_config(40), tiny=True, device="cpu", workdir=Path(sys.argv[3]))
"""


def test_a_killed_run_resumes_without_repeating_stage1(photo, tmp_path):
    """A real kill: the run is a separate process, SIGKILLed once stage 1 is done."""
    out, work = tmp_path / "out.glb", tmp_path / "work"
    root = str(Path(__file__).resolve().parents[3])
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE_RUN, str(photo), str(out), str(work)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            record = json.loads((work / "run.json").read_text()) if (work / "run.json").is_file() else {}
            if "outline" in record.get("timings_s", {}):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not out.exists(), "no output from a killed run"
    assert main(["generate", str(photo), "-o", str(out), "--preset", "draft", "--tiny", "--workdir", str(work)]) == 2, \
        "a folder with an earlier run is not overwritten without --resume"
    rec = Recorder()
    result = generate(photo, out, config=small_config(40), tiny=True, device="cpu", workdir=work, resume=True, callback=rec)
    assert not rec.of(Progress, "outline"), "stage 1 was loaded, not trained again"
    assert rec.of(StageDone, "outline")[0].steps == 40
    assert rec.of(Progress, "detail"), "stage 2 ran"
    validate_glb(out.read_bytes())
    assert result.record["status"] == "done" and result.record["resumed"] is True


def test_an_interrupted_stage2_continues_from_its_checkpoint(photo, tmp_path):
    cfg = small_config(steps=8)
    work = tmp_path / "work"
    stop = Recorder(stop_at=lambda e: isinstance(e, Progress) and e.stage == "detail" and e.step == 5)
    with pytest.raises(KeyboardInterrupt):
        generate(photo, tmp_path / "x.glb", config=cfg, tiny=True, device="cpu", workdir=work, callback=stop)
    assert json.loads((work / "run.json").read_text())["status"] == "cancelled"
    rec = Recorder()
    generate(photo, tmp_path / "x.glb", config=small_config(steps=8), tiny=True, device="cpu", workdir=work,
             resume=True, callback=rec)
    assert [e.step for e in rec.of(Progress, "detail")] == [6, 7, 8]
    assert not rec.of(Progress, "outline") and not rec.of(Progress, "inversion")


def test_cancel_stops_within_a_step_and_leaves_a_consistent_folder(photo, tmp_path):
    token = CancelToken()
    rec = Recorder()

    def cancel_after_three(event):
        rec(event)
        if isinstance(event, Progress) and event.stage == "outline" and event.step == 3:
            token.cancel("user pressed cancel")

    work, out = tmp_path / "work", tmp_path / "out.glb"
    with pytest.raises(Cancelled, match="user pressed cancel"):
        generate(photo, out, config=small_config(steps=20), tiny=True, device="cpu", workdir=work,
                 callback=cancel_after_three, cancel=token)
    assert [e.step for e in rec.of(Progress, "outline")] == [1, 2, 3], "stopped before the next step"
    record = json.loads((work / "run.json").read_text())
    assert record["status"] == "cancelled" and "user pressed cancel" in record["reason"]
    assert not out.exists() and (work / "outline.ckpt").is_file() and (work / "input.png").is_file()


@pytest.mark.parametrize("kind", ["corrupt", "zero-bytes", "empty-alpha", "all-background", "huge-header", "unwritable"])
def test_bad_inputs_exit_2_with_a_message_and_no_output(tmp_path, photo, capsys, kind):

    image, out = tmp_path / "in.png", tmp_path / "out.glb"
    if kind == "corrupt":
        image.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    elif kind == "zero-bytes":
        image.write_bytes(b"")
    elif kind == "empty-alpha":
        Image.new("RGBA", (64, 64), (200, 10, 10, 0)).save(image)
    elif kind == "all-background":
        Image.new("RGB", (64, 64), (255, 255, 255)).save(image)
    elif kind == "huge-header":
        png_header_only(image, 30000, 30000)
    else:
        image = photo
        (tmp_path / "a-file").write_text("not a folder")
        out = tmp_path / "a-file" / "out.glb"
    code = main(["generate", str(image), "-o", str(out), "--preset", "draft", "--tiny", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "mpod123: error:" in err and len(err.strip().splitlines()) <= 3, err
    assert not out.exists()
    if kind == "unwritable":
        assert "cannot write the output" in err
