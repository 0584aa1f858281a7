"""`mpod123 doctor`, the accelerators' parity self-tests (and `auto` never choosing a failed one), the hello summary."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
import platform
import re
import subprocess
import sys
import warnings

import pytest
import torch

from mpod123.runtime import accelerators as _optional  # its old name, kept here
from mpod123.runtime import selftest as accel_selftest
from mpod123.runtime import doctor

ROOT = str(Path(__file__).resolve().parents[3])


def _run(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "mpod123", *args], capture_output=True, text=True, check=False,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def test_doctor_json_on_this_machine_says_cpu_no_accelerators_no_weights(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cache = tmp_path / "hf-cache"
    out = _run("doctor", "--json", "--data", str(tmp_path), env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["python"]["version"] == platform.python_version()
    assert report["torch"]["version"] == torch.__version__ and report["torch"]["build"] == "cpu"
    assert report["torch"]["cuda"] is None and report["torch"]["cuda_available"] is False
    assert report["device"]["type"] == "cpu" and report["device"]["memory_gb"] > 0
    assert set(report["accelerators"]) == {"tcnn", "nerfacc", "kaolin", "nvdiffrast"}
    for name, acc in report["accelerators"].items():
        installed = importlib.util.find_spec(_optional.ACCELERATORS[name].module.split(".")[0]) is not None
        assert acc["present"] == installed and acc["auto"] is False and acc["self_test"] == "not run", (name, acc)
        assert ("not installed" in acc["detail"]) != installed
    assert [w["role"] for w in report["weights"]] == ["zero123", "sd"]
    assert all(not w["ready"] and w["path"] is None and w["download_bytes"] > 1e9 for w in report["weights"])
    assert report["weights_summary"] == "models: will download 9.3 GB"
    assert report["disk"]["cache"]["path"] == str(cache) and report["disk"]["cache"]["free_gb"] > 0
    assert report["disk"]["data"]["path"] == str(tmp_path)
    if not any(a["present"] for a in report["accelerators"].values()):
        assert report["summary"] == f"CPU, torch {torch.__version__} (cpu); accelerators: none; models: will download 9.3 GB"
    # the text form says the same
    text = _run("doctor", env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}).stdout
    assert "build cpu" in text and "models: will download 9.3 GB" in text and re.search(r"tcnn\s+absent", text)


def _cumsum_right(x):
    return torch.cumsum(x, 0)


def _cumsum_wrong(x):  # an "accelerated" op with a bug: it drops the last element's contribution
    y = torch.cumsum(x, 0)
    y[-1] -= x[-1]
    return y


@pytest.fixture
def fake_accelerator(monkeypatch):
    """A real op pair registered as an accelerator that needs no CUDA (module: the standard library's colorsys)."""
    monkeypatch.setitem(_optional.ACCELERATORS, "fakeacc", _optional.Accelerator("fakeacc", "colorsys", "n/a", False))
    _optional.forget("fakeacc")
    impl = {"op": _cumsum_wrong}

    def self_test(device):
        x = torch.arange(1.0, 9.0, device=device)
        torch.testing.assert_close(impl["op"](x), _cumsum_right(x))

    monkeypatch.setitem(accel_selftest.SELF_TESTS, "fakeacc", self_test)
    accel_selftest.forget("fakeacc")
    yield impl
    accel_selftest.forget("fakeacc")
    _optional.forget("fakeacc")


def test_an_accelerator_that_fails_its_self_test_is_never_chosen_by_auto(fake_accelerator):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _optional.resolve_backend("auto", "fakeacc", "cpu") == "torch"
    assert any("failed its parity self-test" in str(w.message) for w in caught)
    with pytest.raises(_optional.BackendUnavailable, match="failed its parity self-test.*Mismatched elements: 1 / 8"):
        _optional.resolve_backend("fakeacc", "fakeacc", "cpu")
    report = doctor.accelerators("cpu")["fakeacc"]
    assert report["present"] and report["self_test"] == "failed" and report["auto"] is False
    assert "Mismatched" in report["detail"]
    assert accel_selftest.results()["fakeacc"].startswith("AssertionError")
    # the same accelerator, fixed: its self-test passes and auto uses it
    fake_accelerator["op"] = _cumsum_right
    accel_selftest.forget("fakeacc")
    assert _optional.resolve_backend("auto", "fakeacc", "cpu") == "fakeacc"
    report = doctor.accelerators("cpu")["fakeacc"]
    assert report["self_test"] == "passed" and report["auto"] is True


def test_a_self_test_leaves_the_callers_random_state_alone(fake_accelerator):
    def noisy_self_test(device):
        torch.manual_seed(123)
        torch.rand(1000)

    accel_selftest.SELF_TESTS["fakeacc"] = noisy_self_test
    fake_accelerator["op"] = _cumsum_right
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    assert _optional.resolve_backend("auto", "fakeacc", "cpu") == "fakeacc", "the self-test ran (and passed)"
    assert torch.equal(torch.rand(4), expected), "a seeded run draws the same numbers with or without a self-test"


def test_every_real_accelerator_has_a_self_test_registered_by_the_module_that_owns_its_op():
    """The registry imports no layer above it: the owners hand their self-tests in when imported
    (a fresh process, so an earlier test's imports cannot make this pass)."""
    code = (
        "import json, mpod123.runtime.selftest as st, mpod123.runtime.accelerators as acc\n"
        "before = sorted(st.SELF_TESTS)\n"
        "import mpod123.rendering\n"
        "print(json.dumps([before, {n: t.__module__ for n, t in st.SELF_TESTS.items()}, sorted(acc.ACCELERATORS)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    before, owners, accelerators = json.loads(out.stdout.strip().splitlines()[-1])
    assert before == [], "the registry itself knows no op"
    assert sorted(owners) == accelerators
    assert owners == {"tcnn": "mpod123.fields.hash_grid", "kaolin": "mpod123.geometry.marching_tets",
                      "nerfacc": "mpod123.rendering.volume_renderer", "nvdiffrast": "mpod123.rendering.mesh_renderer"}


def test_doctor_says_when_no_self_test_is_registered(monkeypatch):
    monkeypatch.setitem(_optional.ACCELERATORS, "fakeacc", _optional.Accelerator("fakeacc", "colorsys", "n/a", False))
    monkeypatch.delitem(accel_selftest.SELF_TESTS, "fakeacc", raising=False)
    report = doctor.accelerators("cpu")["fakeacc"]
    assert report["self_test"] == "not registered" and "importing mpod123.rendering" in report["detail"]


def _serve(data, *extra, env=None):
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpod123", "serve", "--bind", "tcp://127.0.0.1:0", "--data", str(data), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env={**os.environ, **(env or {})},
    )
    line = proc.stdout.readline()
    match = re.search(r"on (tcp://\S+) ", line)
    assert match, line + (proc.stdout.read() if proc.poll() is not None else "")
    return proc, match.group(1)


@pytest.mark.parametrize("extra, expected", [
    (("--tiny",), "GPU: none (CPU), models: tiny (built in, no download)"),
    (("--job", "backend.kinds.dispatch:pipeline_job"), "GPU: none (CPU), models: will download 9.3 GB"),
])
def test_the_hello_reply_carries_the_summary(tmp_path, extra, expected):
    pytest.importorskip("zmq")
    if os.path.isdir("/proc/driver/nvidia/gpus"):
        pytest.skip("this machine has an NVIDIA GPU")
    from backend.client import Client

    proc, endpoint = _serve(tmp_path, *extra, env={"HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"})
    try:
        with Client(endpoint, session="s", timeout_s=10) as client:
            assert client.hello()["summary"] == expected
    finally:
        proc.terminate()
        proc.wait(timeout=20)
