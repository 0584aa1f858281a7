"""Shared fixtures: tiny configurations that run in milliseconds on the CPU, tiny models made once per module,
the session's Ray. Plain helpers that tests import live beside this file: inputs.py (photos, cameras),
tiny_models.py (tiny models, small_config), eval_assets.py, backend_harness.py, addon_backend.py, fake_hub.py
(benchmarks/gltf_validator.py runs the Khronos validator for tests and benchmarks). No test module imports another test module."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _own_runtime_dir(tmp_path_factory):
    """One runtime folder for the whole run, set before any fixture starts a `serve`: the local keys a
    server makes there are the ones this run's clients read (a module-scoped server and a test's client
    must agree), and no test touches the user's real runtime folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MPOD123_RUNTIME_DIR", str(tmp_path_factory.mktemp("runtime") / "rt"))
        yield


@pytest.fixture(autouse=True)
def _quiet_fallback_warnings():
    from mpod123.runtime.accelerators import AcceleratorFallbackWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AcceleratorFallbackWarning)
        yield


@pytest.fixture(autouse=True)
def _every_progress_event():
    """Stages report every step in tests that stop or cancel at a given step; the throttle
    (4 a second in production) has its own tests, which set the rate they check."""
    from mpod123.stages.base import OptimisationStage

    rate = OptimisationStage.progress_rate_hz
    OptimisationStage.progress_rate_hz = 0.0
    yield
    OptimisationStage.progress_rate_hz = rate


@pytest.fixture
def tiny_cfg():
    """The draft preset shrunk further: 24 px renders, a small grid and MLPs."""
    from mpod123.config import outline_preset

    cfg = outline_preset("draft")
    cfg.render.resolution = 24
    cfg.preview_every = 0
    cfg.checkpoint_every = 0
    return cfg


@pytest.fixture(scope="module")
def tiny_models_home(tmp_path_factory):
    """Tiny models made once for the module that asks, in the folder where ``tiny=True`` looks for them
    (``MPOD123_TINY_MODELS``, restored afterwards). A module where every test needs them says
    ``pytestmark = pytest.mark.usefixtures("tiny_models_home")``."""
    from tests.tiny_models import tiny_models_env

    with tiny_models_env(tmp_path_factory.mktemp("tiny-models")) as folder:
        yield folder


def requires_cuda(reason: str = "needs a CUDA device"):
    return pytest.mark.skipif(not torch.cuda.is_available(), reason=reason)


@pytest.fixture(scope="session")
def ray_runtime():
    """One local Ray for the whole session (starting one takes seconds): two CPUs, a small object store."""
    ray = pytest.importorskip("ray", reason="the Ray executor's tests need ray: pip install 'mpod123[ray]'")
    ray.init(address="local", num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
