"""The pipeline's weights as a visible step: status, copying from a mirror folder with progress (resumable),
failing at once with no network, and a real backend job that reports its weights download as progress events."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpod123.runtime import weights as models

ROOT = Path(__file__).resolve().parents[3]
SD, ZERO123 = (s.source for s in models.pipeline_models()[::-1])


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """Tiny random models saved under the pipeline's default hub ids: a studio's mirror of the hub, in miniature."""
    from mpod123.runtime.tiny_models import save_tiny_stable_diffusion, save_tiny_zero123

    root = tmp_path_factory.mktemp("mirror")
    save_tiny_stable_diffusion(root / SD)
    save_tiny_zero123(root / ZERO123)
    return root


def _no_network():
    return "no network (test)"


def test_nothing_cached_means_not_ready_and_an_estimate_to_download(tmp_path):
    specs = models.pipeline_models()
    states = [models.status(s, tmp_path) for s in specs]
    assert [s.ready for s in states] == [False, False]
    assert states[0].missing == list(models.ZERO123_COMPONENTS) and states[1].missing == list(models.SD_COMPONENTS)
    assert models.summary(specs, tmp_path) == "models: will download 9.3 GB"


def test_missing_weights_with_no_network_fail_at_once_with_the_fix(tmp_path):
    spec = models.pipeline_models()[1]
    t0 = time.monotonic()
    with pytest.raises(models.ModelNotFound) as info:
        models.ensure(spec, cache=tmp_path, mirror=tmp_path / "no-mirror", offline=_no_network)
    assert time.monotonic() - t0 < 1.0
    text = str(info.value)
    assert f"mpod123 models download {SD}" in text and "no network (test)" in text and "--sd" in text
    assert str(models.repo_folder(SD, tmp_path)) in text
    assert not models.repo_folder(SD, tmp_path).exists(), "nothing half-made"


def test_the_loader_fails_at_once_offline_and_says_how_to_download(tmp_path, monkeypatch):
    from diffusers import UNet2DConditionModel

    from mpod123.guidance.sds import ModelNotFound, load_component

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFound, match=r"not in the cache .* HF_HUB_OFFLINE is set. Run `mpod123 models download`"):
        load_component(UNet2DConditionModel, SD, "unet", None, "Stable Diffusion", "--sd")
    assert ModelNotFound is models.ModelNotFound


def test_a_mirror_copy_reports_progress_resumes_and_loads_through_from_pretrained(mirror, tmp_path):
    from diffusers import UNet2DConditionModel

    spec = models.pipeline_models()[1]
    cache = tmp_path / "cache"
    # a copy interrupted half-way through the UNet's weights
    revision = models.local_revision(SD)
    src_unet = mirror / SD / "unet" / "diffusion_pytorch_model.safetensors"
    part = models.repo_folder(SD, cache) / "snapshots" / revision / "unet" / "diffusion_pytorch_model.safetensors.incomplete"
    part.parent.mkdir(parents=True)
    half = src_unet.stat().st_size // 2
    part.write_bytes(src_unet.read_bytes()[:half])
    assert not models.status(spec, cache).ready, "a half copy is not ready (refs/main comes last)"

    events = []
    folder = models.ensure(spec, events.append, cache=cache, mirror=mirror, offline=_no_network)
    files = models.choose_files({p.relative_to(mirror / SD).as_posix(): p.stat().st_size
                                 for p in (mirror / SD).rglob("*") if p.is_file()}, spec.components)
    total = sum(files.values())
    assert events and all(e.total_bytes == total and e.name == SD.split("/")[-1] for e in events)
    done = [e.done_bytes for e in events]
    assert done == sorted(done) and done[-1] == total
    unet_events = [e for e in events if e.file == "unet/diffusion_pytorch_model.safetensors"]
    assert unet_events and unet_events[0].done_bytes >= half, "the interrupted file continued from its .incomplete"
    assert events[-1].text() == f"downloading {SD.split('/')[-1]}: {total / 1e9:.1f} / {total / 1e9:.1f} GB"
    for name in files:
        assert (folder / name).read_bytes() == (mirror / SD / name).read_bytes(), name
    assert models.status(spec, cache).ready and models.summary([spec], cache) == "models: ready"
    # the pipeline's own loader path finds it by hub id, offline
    unet = UNet2DConditionModel.from_pretrained(SD, subfolder="unet", cache_dir=str(cache))
    assert unet.config.in_channels == 4
    # a second ensure is a no-op
    again = []
    assert models.ensure(spec, again.append, cache=cache, offline=_no_network) == folder and again == []


def test_models_cli_list_and_download_from_a_folder(mirror, tmp_path):
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "mpod123", "models", *a], capture_output=True,  # noqa: E731
                                    text=True, env=env, cwd=ROOT, timeout=120, check=False)
    out = run("download", "sd", "--from", str(mirror / SD))
    assert out.returncode == 0, out.stderr
    assert "stable-diffusion-v1-5: [##############################]" in out.stderr and f"sd: {SD} ready at" in out.stdout
    after = json.loads(run("list", "--json").stdout)
    assert [(m["role"], m["ready"]) for m in after] == [("zero123", False), ("sd", True)]
    assert after[1]["bytes_on_disk"] > 0 and after[0]["download_bytes"] > 1e9


def _serve(data: Path, env: dict, watchdog_s: float = 60):
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpod123", "serve", "--bind", "tcp://127.0.0.1:0", "--data", str(data),
         "--job", "backend.kinds.dispatch:pipeline_job", "--watchdog", str(watchdog_s)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env={**os.environ, **env},
    )
    line = proc.stdout.readline()
    match = re.search(r"on (tcp://\S+) ", line)
    assert match, line + (proc.stdout.read() if proc.poll() is not None else "")
    return proc, match.group(1)


def _png() -> bytes:
    from tests.addon_backend import object_png

    return object_png()


def test_a_job_with_missing_weights_and_no_network_fails_at_once_with_the_fix(tmp_path):
    pytest.importorskip("zmq")
    from backend.client import Client

    proc, endpoint = _serve(tmp_path / "data", {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")})
    try:
        with Client(endpoint, session="s", timeout_s=10) as client:
            t0 = time.monotonic()
            job_id = client.submit(_png(), {"preset": "draft"})
            final = client.wait(job_id, timeout_s=60)
            elapsed = time.monotonic() - t0
        assert final.content["kind"] == "failed", final.content
        assert final.content["ename"] == "ModelNotFound", final.content
        assert "mpod123 models download" in final.content["evalue"] and "HF_HUB_OFFLINE" in final.content["evalue"]
        assert elapsed < 30, f"failed after {elapsed:.0f} s: at once, not after the 60 s watchdog"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_a_job_reports_its_weights_download_as_progress_events_and_the_watchdog_counts_them(mirror, tmp_path):
    """The real hub download path (hf_hub_download) against a hub on loopback that serves the tiny models slowly:
    the download takes longer than the watchdog's limit, and the job lives because its progress events count."""
    pytest.importorskip("zmq")
    from backend.client import Client
    from tests.fake_hub import FakeHub

    with FakeHub(mirror, delay_s=0.03) as hub:
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path / "cache")}
        proc, endpoint = _serve(tmp_path / "data", env, watchdog_s=3)
        try:
            with Client(endpoint, session="s", timeout_s=10) as client:
                t0 = time.monotonic()
                job_id = client.submit(_png(), {"preset": "draft", "steps": 1})
                events, deadline = [], time.monotonic() + 90
                while time.monotonic() < deadline:
                    events += [m for m in client.drain() if m.job_id == job_id]
                    finished = {m.content["model"] for m in events if m.content.get("stage") == "weights"
                                and m.content["step"] == m.content["total"]}
                    if len(finished) == 2 or any(m.content["kind"] in ("failed", "done") for m in events):
                        break
                    time.sleep(0.1)
                download_s = time.monotonic() - t0
                client.cancel(job_id)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    assert not any(m.content["kind"] == "failed" for m in events), [m.content for m in events][-3:]
    assert download_s > 3, f"the download ({download_s:.1f} s) outlasted the 3 s watchdog"
    weights = [m.content for m in events if m.content["kind"] == "progress" and m.content.get("stage") == "weights"]
    for model in (ZERO123.split("/")[-1], SD.split("/")[-1]):
        mine = [w for w in weights if w["model"] == model]
        steps = [w["step"] for w in mine]
        assert steps == sorted(steps) and mine[-1]["step"] == mine[-1]["total"] > 0, mine
        assert mine[-1]["message"].startswith(f"downloading {model}: ")
    assert any(0 < w["step"] < w["total"] for w in weights), "bytes reported while a file was still downloading"
    assert ("GET", f"/{SD}/resolve/main/unet/diffusion_pytorch_model.safetensors") in hub.requests
    assert not any(m.content.get("stage") in ("outline", "detail") for m in events), "the weights come first"
    assert models.status(models.pipeline_models()[1], tmp_path / "cache").ready, "and stay in the cache"
    logs = [m.content["text"] for m in events if m.content["kind"] == "log"]
    assert any("are not here yet" in t for t in logs)
