"""`mpod123 batch` as a real process: a real backend (`mpod123 serve`, embedded or on loopback with CURVE
keys), real sockets, the real bpy module; every .blend is checked by reopening it in a fresh Python process.

The backend runs the demo job (`--job backend.demo:demo_job`): the pipeline's event pattern and a real
textured GLB in a few seconds, so the batch logic is what these tests time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

pytest.importorskip("zmq")
pytest.importorskip("bpy")

from blender_batch.catalog import CATS_FILE, catalog_uuid
from blender_batch.manifest import MANIFEST_NAME

ROOT = Path(__file__).resolve().parents[2]
DEMO = ["--job", "backend.demo:demo_job"]
SHAPES = [
    ("red_ellipse.png", (220, 40, 40), "ellipse"),
    ("GreenBox.png", (40, 170, 60), "box"),
    ("blue-triangle.png", (40, 70, 220), "triangle"),
    ("mug.jpg", (230, 180, 30), "ellipse"),
    ("mug.png", (140, 50, 170), "box"),  # same stem as mug.jpg, which sorts first: becomes mug_png
]

CHECK = r"""
import json, sys
import numpy as np
import bpy
bpy.ops.wm.open_mainfile(filepath=sys.argv[1])
out = {"objects": [o.name for o in bpy.data.objects]}
obj = bpy.data.objects[0]
meta = obj.asset_data
out["asset"] = meta is not None
if meta is not None:
    out.update(catalog_id=meta.catalog_id, tags=[t.name for t in meta.tags], description=meta.description,
               author=meta.author)
prev = obj.preview
out["preview_size"] = list(prev.image_size) if prev is not None else [0, 0]
if prev is not None and prev.image_size[0]:
    px = np.empty(prev.image_size[0] * prev.image_size[1] * 4, np.float32)
    prev.image_pixels_float.foreach_get(px)
    px = px.reshape(-1, 4)
    covered = px[px[:, 3] > 0.5]
    out["preview_coverage"] = float(len(covered) / len(px))
    out["preview_spread"] = float((covered[:, :3].max(1) - covered[:, :3].min(1)).mean()) if len(covered) else 0.0
out["faces"] = len(obj.data.polygons) if obj.type == "MESH" else 0
out["base_color"] = []
for mat in obj.data.materials:
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    for link in bsdf.inputs["Base Color"].links:
        node = link.from_node
        if node.type == "TEX_IMAGE" and node.image is not None:
            img = node.image
            out["base_color"].append({"image": img.name, "packed": img.packed_file is not None,
                                      "packed_bytes": img.packed_file.size if img.packed_file else 0,
                                      "size": list(img.size), "filepath": img.filepath})
print("RESULT " + json.dumps(out))
"""

CHECK_LIBRARY = r"""
import json, sys
import bpy
bpy.ops.wm.open_mainfile(filepath=sys.argv[1])
print("RESULT " + json.dumps({
    "objects": sorted(o.name for o in bpy.data.objects),
    "linked": sorted(o.name for o in bpy.data.objects if o.library is not None),
    "libraries": sorted(lib.filepath for lib in bpy.data.libraries),
    "meshes_loaded": sorted(m.name for m in bpy.data.meshes),
}))
"""


def make_photos(folder: Path, shapes=SHAPES) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, colour, kind in shapes:
        im = Image.new("RGB", (160, 160), "white")
        d = ImageDraw.Draw(im)
        if kind == "ellipse":
            d.ellipse((30, 40, 130, 130), fill=colour)
        elif kind == "box":
            d.rectangle((45, 30, 115, 135), fill=colour)
        else:
            d.polygon([(80, 25), (135, 135), (25, 135)], fill=colour)
        im.save(folder / name, quality=95) if name.endswith(".jpg") else im.save(folder / name)


def batch_cmd(photos: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mpod123", "batch", str(photos), "--out", str(out), "--timeout", "60",
            "--job-timeout", "300", *extra]


def run_batch(photos: Path, out: Path, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(batch_cmd(photos, out, *extra), check=False, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def check_in_fresh_processes(script: str, paths: list[Path]) -> dict[Path, dict]:
    """Run ``script`` on each path, each in its own new Python process (two at a time)."""
    results: dict[Path, dict] = {}
    pending = list(paths)
    running: list[tuple[Path, subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < 2:
            p = pending.pop(0)
            running.append((p, subprocess.Popen([sys.executable, "-c", script, str(p)], stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, text=True)))
        p, proc = running.pop(0)
        text = proc.communicate(timeout=120)[0]
        line = next((ln for ln in text.splitlines() if ln.startswith("RESULT ")), None)
        assert proc.returncode == 0 and line, text[-2000:]
        results[p] = json.loads(line[len("RESULT "):])
    return results


def blends(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.blend") if not p.name.startswith(".") and p.stem != "mpod123-library")


def backend_jobs(db: Path) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        # client_id: the id the batch chose (job_id is the server's own since job ids became per owner)
        return con.execute("SELECT client_id, state, attempts, owner FROM jobs ORDER BY client_id").fetchall()


def dead(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


# --------------------------------------------------------------------------------------------- tests
def test_a_folder_of_photos_becomes_exactly_one_asset_per_distinct_image(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "assets"
    make_photos(photos)
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x17" * 40)  # corrupt
    (photos / "red_ellipse_copy.png").write_bytes((photos / "red_ellipse.png").read_bytes())  # duplicate
    (photos / "readme.txt").write_text("not a photo")

    t0 = time.monotonic()
    res = run_batch(photos, out, *DEMO, "--jobs", "2", "--catalog", "Products/Test", "--library")
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    found = blends(out)
    assert [p.name for p in found] == ["GreenBox.blend", "blue-triangle.blend", "mug.blend", "mug_png.blend",
                                       "red_ellipse.blend"]
    summary = res.stdout
    assert "5 done, 0 failed, 3 skipped" in summary
    assert re.search(r"skipped\s+broken\.png\s+-\s+damaged image", summary)
    assert re.search(r"skipped\s+red_ellipse_copy\.png\s+-\s+duplicate of red_ellipse\.png", summary)
    assert re.search(r"skipped\s+readme\.txt\s+-\s+not an image", summary)
    assert re.search(r"done\s+mug\.png\s+mug_png\s+mug_png\.blend .*renamed to mug_png", summary)
    assert "[GreenBox] submitted" in res.stderr and "[GreenBox] done -> GreenBox.blend" in res.stderr
    assert re.search(r"\[mug\] (outline|detail) \d+/\d+", res.stderr), "per-job stage lines"

    cat_id = catalog_uuid("Products/Test")
    assert f"{cat_id}:Products/Test:" in (out / CATS_FILE).read_text()
    for path in found:
        assert path.read_bytes()[:7] != b"BLENDER", f"{path.name} is not compressed"
    checks = check_in_fresh_processes(CHECK, found)
    for path, info in checks.items():
        name = path.stem
        assert info["objects"] == [name], "one object per file, named after the photo"
        assert info["asset"] and info["catalog_id"] == cat_id and info["author"] == "MPOD123 batch"
        assert "mpod123" in info["tags"]
        source = {"mug": "mug.jpg", "mug_png": "mug.png"}.get(name, f"{name}.png")
        assert f"from the photo {source} " in info["description"] and "preset fast, seed 0" in info["description"]
        assert info["preview_size"] == [256, 256]
        assert 0.05 < info["preview_coverage"] < 0.95, "the preview shows the object on a transparent film"
        assert info["preview_spread"] > 0.05, "the preview is coloured (the textured object), not blank grey"
        assert info["faces"] > 100
        assert len(info["base_color"]) == 1, "an image texture drives Base Color"
        tex = info["base_color"][0]
        assert tex["packed"] and tex["packed_bytes"] > 1000 and tex["size"][0] >= 64
    assert set(checks[out / "GreenBox.blend"]["tags"]) == {"green", "box", "mpod123"}
    assert set(checks[out / "blue-triangle.blend"]["tags"]) == {"blue", "triangle", "mpod123"}

    lib = check_in_fresh_processes(CHECK_LIBRARY, [out / "mpod123-library.blend"])[out / "mpod123-library.blend"]
    assert lib["objects"] == lib["linked"] == sorted(p.stem for p in found)
    assert sorted(lib["libraries"]) == sorted(f"//{p.name}" for p in found), "relative library paths"

    m = json.loads((out / MANIFEST_NAME).read_text())
    entries = sorted(m["photos"].values(), key=lambda e: e["name"])
    assert [e["state"] for e in entries] == ["done"] * 5
    assert all(e["attempts"] == 1 and len(e["result_sha256"]) == 64 and e["blend"] == f"{e['name']}.blend"
               for e in entries)
    jobs = backend_jobs(out / ".mpod123" / "backend" / "jobs.sqlite")
    assert sorted(j[0] for j in jobs) == sorted(e["job_id"] for e in entries) and {j[1] for j in jobs} == {"done"}
    pid = int((out / ".mpod123" / "backend.pid").read_text())
    assert dead(pid), "the embedded backend was stopped"
    print(f"batch of 5: {took:.1f}s")

    # a rerun has nothing to do: no backend is started, nothing is rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in found}
    res2 = run_batch(photos, out, *DEMO)
    assert res2.returncode == 0 and "0 done, 0 failed, 8 skipped" in res2.stdout
    assert "starting a local backend" not in res2.stderr
    assert {p: p.stat().st_mtime_ns for p in found} == mtimes


def test_a_killed_batch_resumes_without_redoing_finished_assets(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "assets"
    make_photos(photos)
    log = tmp_path / "run1.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(batch_cmd(photos, out, *DEMO, "--jobs", "2", "--job-option", "step_s=0.25"),
                                cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    try:
        def in_flight() -> bool:  # the manifest is replaced atomically, so it always parses
            path = out / MANIFEST_NAME
            return path.exists() and any(e["state"] == "submitted" for e in json.loads(path.read_text())["photos"].values())

        deadline = time.time() + 150
        while not (len(blends(out)) >= 2 and in_flight()) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert len(blends(out)) >= 2, log.read_text()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    first = {p: p.stat().st_mtime_ns for p in blends(out)}
    assert 2 <= len(first) < 5, "killed with work left to do"
    backend_pid = int((out / ".mpod123" / "backend.pid").read_text())
    deadline = time.time() + 10
    while not dead(backend_pid) and time.time() < deadline:
        time.sleep(0.1)
    assert dead(backend_pid), "the embedded backend dies with a SIGKILLed batch"
    m1 = json.loads((out / MANIFEST_NAME).read_text())
    done1 = {sha: e for sha, e in m1["photos"].items() if e["state"] == "done"}
    assert {e["blend"] for e in done1.values()} == {p.name for p in first}
    unfinished = [e for e in m1["photos"].values() if e["state"] != "done"]
    assert any(e["state"] == "submitted" for e in unfinished), "some jobs were in flight when it was killed"

    res = run_batch(photos, out, *DEMO, "--jobs", "2", "--job-option", "step_s=0.25")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert len(blends(out)) == 5
    assert {p: p.stat().st_mtime_ns for p in first} == first, "finished assets are not rewritten"
    assert f"{len(first)} skipped" in res.stdout.splitlines()[-1] and f"{5 - len(first)} done" in res.stdout
    m2 = json.loads((out / MANIFEST_NAME).read_text())
    assert m2["runs"] == 2 and m2["session"] == m1["session"]
    for sha, e in m2["photos"].items():
        assert e["state"] == "done"
        if sha in done1:
            assert e["history"] == done1[sha]["history"] and all(h[0] == 1 for h in e["history"]), "untouched"
            assert e["job_id"] == done1[sha]["job_id"] and e["attempts"] == 1
        else:
            assert any(h[0] == 2 for h in e["history"])
    reattached = [e for e in m2["photos"].values() if any(h[0] == 2 and h[1].startswith("reattached") for h in e["history"])]
    assert reattached, "jobs still on the backend are reattached, not submitted anew"
    assert all(e["attempts"] == 1 for e in m2["photos"].values()), "no photo needed a second job"
    jobs = backend_jobs(out / ".mpod123" / "backend" / "jobs.sqlite")
    assert len(jobs) == 5 and {j[1] for j in jobs} == {"done"}, "exactly one backend job per photo"
    assert sorted(j[0] for j in jobs) == sorted(e["job_id"] for e in m2["photos"].values())


def test_failed_jobs_are_retried_then_reported_and_a_rerun_resubmits_them(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "assets"
    make_photos(photos, SHAPES[:1])
    res = run_batch(photos, out, *DEMO, "--job-option", "fail_at=1", "--retries", "1")
    assert res.returncode == 1, res.stdout + res.stderr
    assert re.search(r"failed\s+red_ellipse\.png\s+red_ellipse\s+RuntimeError: demo failure at step 1", res.stdout)
    assert "retrying" in res.stderr
    (entry,) = json.loads((out / MANIFEST_NAME).read_text())["photos"].values()
    assert entry["state"] == "failed" and entry["attempts"] == 2 and "demo failure" in entry["error"]
    jobs = backend_jobs(out / ".mpod123" / "backend" / "jobs.sqlite")
    assert len(jobs) == 2 and {j[1] for j in jobs} == {"failed"}, "each attempt is its own job"

    res = run_batch(photos, out, *DEMO, "--job-option", "fail_at=1", "--retries", "0")
    assert res.returncode == 1
    (entry,) = json.loads((out / MANIFEST_NAME).read_text())["photos"].values()
    assert entry["attempts"] == 3 and len(backend_jobs(out / ".mpod123" / "backend" / "jobs.sqlite")) == 3
    assert not blends(out)


@pytest.fixture
def curve_server(tmp_path):
    from backend.security import init_keys

    keys = tmp_path / "keys"
    init_keys(keys, "batch")
    data = tmp_path / "server-data"
    data.mkdir()
    log = data / "serve.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "mpod123", "serve", "--bind", "tcp://127.0.0.1:0", "--keys",
                                 str(keys), "--data", str(data), "--workers", "2", *DEMO],
                                cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        match = None
        while match is None and time.time() < deadline and proc.poll() is None:
            match = re.search(r"on (tcp://\S+) \(CURVE\)", log.read_text())
            time.sleep(0.1)
        assert match, log.read_text()
        yield match.group(1), keys, data
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # a clean stop; SIGINT is ignored under a background job
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_a_remote_backend_with_curve_keys(tmp_path, curve_server):
    from backend.security import init_keys

    endpoint, keys, data = curve_server
    photos, out = tmp_path / "photos", tmp_path / "assets"
    make_photos(photos, SHAPES[:2])
    res = run_batch(photos, out, "--server", endpoint, "--server-key", str(keys / "server.key"),
                    "--client-key", str(keys / "batch.key_secret"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert [p.name for p in blends(out)] == ["GreenBox.blend", "red_ellipse.blend"]
    assert "starting a local backend" not in res.stderr and not (out / ".mpod123" / "backend").exists()
    jobs = backend_jobs(data / "jobs.sqlite")
    public = (keys / "clients" / "batch.key").read_text()
    assert len(jobs) == 2 and {j[1] for j in jobs} == {"done"}
    assert all(j[3].startswith("key:") and j[3][4:] in public for j in jobs), "jobs belong to the client's key"
    checks = check_in_fresh_processes(CHECK, blends(out))
    assert all(c["asset"] and c["preview_size"] == [256, 256] and c["base_color"][0]["packed"] for c in checks.values())

    # a key that is not on the server's allow-list gets a clear failure, not a hang
    stranger = tmp_path / "stranger"
    init_keys(stranger, "stranger")
    res = run_batch(photos, tmp_path / "assets2", "--server", endpoint, "--server-key", str(keys / "server.key"),
                    "--client-key", str(stranger / "stranger.key_secret"), "--timeout", "3")
    assert res.returncode == 1
    assert "allow-list" in res.stderr and "cannot talk to the backend" in res.stderr
    # half a key pair is a usage error
    res = run_batch(photos, tmp_path / "assets3", "--server", endpoint, "--server-key", str(keys / "server.key"))
    assert res.returncode == 2 and "--client-key" in res.stderr


def test_tiny_models_run_the_real_pipeline_behind_the_batch(tmp_path):
    pytest.importorskip("diffusers")
    photos, out = tmp_path / "photos", tmp_path / "assets"
    make_photos(photos, SHAPES[:1])
    env = dict(os.environ, MPOD123_TINY_MODELS=str(tmp_path / "tiny-models"), HF_HUB_OFFLINE="1")
    res = subprocess.run(batch_cmd(photos, out, "--tiny", "--steps", "1"), check=False, cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "tiny_pipeline_job" in res.stderr
    for stage in ("outline", "inversion", "detail"):
        assert f"[red_ellipse] {stage} done" in res.stderr
    (entry,) = json.loads((out / MANIFEST_NAME).read_text())["photos"].values()
    info = check_in_fresh_processes(CHECK, [out / "red_ellipse.blend"])[out / "red_ellipse.blend"]
    assert "preset draft, seed 0, steps 1" in info["description"]
    assert info["objects"] == ["red_ellipse"] and info["asset"] and info["faces"] > 0
    assert info["base_color"] and info["base_color"][0]["packed"]
    assert entry["state"] == "done" and entry["attempts"] == 1


_STOP_UNDER_IGNORED_SIGINT = """
import sys, time
from blender_batch.service import EmbeddedBackend
backend = EmbeddedBackend.start(sys.argv[1], job="backend.demo:demo_job")
t0 = time.monotonic()
backend.stop()
print(round(time.monotonic() - t0, 2), backend.proc.returncode)
"""


def test_the_embedded_backend_stops_cleanly_when_the_batch_runs_with_sigint_ignored(tmp_path):
    """A batch started from a shell's background job (``nohup mpod123 batch ... &``) has SIGINT ignored, and
    so does its embedded backend: a stop by SIGINT waited out the 15 s grace and ended in SIGKILL."""
    proc = subprocess.run([sys.executable, "-c", _STOP_UNDER_IGNORED_SIGINT, str(tmp_path / "data")], cwd=ROOT,
                          capture_output=True, text=True, timeout=180,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    seconds, code = proc.stdout.split()[-2:]
    assert float(seconds) < 10 and code != str(-signal.SIGKILL), f"stopped in {seconds} s with exit code {code}"
