"""The training loop's guards: a non-finite step is skipped and counted, progress is throttled
(every preview and stage end still arrives), and the runner's determinism settings."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time

import pytest
import torch

from mpod123.guidance import MultiViewSupervision
from mpod123.runtime.progress import Preview, Progress, StageDone
from mpod123.stages import OutlineStage, ReferenceView
from mpod123.runtime.syncs import SyncCounter, gpu_paths
from mpod123.stages.base import PROGRESS_RATE_HZ, OptimisationStage, is_fused
from mpod123.bench.synthetic import turntable_dataset


class NaNAt:
    """Wraps a guidance: its loss is NaN at the given 0-based stage steps."""

    def __init__(self, inner, steps):
        self.inner, self.steps = inner, set(steps)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, inp):
        losses = self.inner(inp)
        if inp.step in self.steps:
            key = next(iter(losses))
            losses[key] = losses[key] * float("nan")
        return losses


def _stage(tiny_cfg, guidance_wrap=lambda g: g, callback=None):
    views = turntable_dataset(4, 24)
    guidance = guidance_wrap(MultiViewSupervision(views.images, views.cameras))
    return OutlineStage(tiny_cfg, ReferenceView(views.images[0], views.cameras[0]), guidance, callback=callback)


BRANCHES = pytest.mark.parametrize("branch", ["cpu", "gpu"])
"""cpu: the host check and torch's default Adam; gpu: the GPU's branches (fused Adam with a device-side
found_inf), taken on the CPU."""


def _branch(name):
    return gpu_paths() if name == "gpu" else contextlib.nullcontext()


@BRANCHES
def test_a_nan_guidance_loss_skips_the_step_and_leaves_params_and_adam_finite(tiny_cfg, tmp_path, branch):
    with _branch(branch):
        _nan_loss_is_skipped(tiny_cfg, tmp_path, branch)


def _nan_loss_is_skipped(tiny_cfg, tmp_path, branch):
    tiny_cfg.reference_view_prob = 0.0  # every step asks the guidance
    stage = _stage(tiny_cfg, lambda g: NaNAt(g, {2}))
    assert is_fused(stage.optimizer) == (branch == "gpu")
    for _ in range(2):
        stage.train_step()
    params = [p.detach().clone() for p in stage.field.parameters()]
    adam = {k: v.clone() for k, v in stage.optimizer.state[next(iter(stage.field.parameters()))].items()}
    losses = stage.train_step()  # step index 2: NaN
    assert any(math.isnan(float(v)) for v in losses.values()), "the NaN is reported, not hidden"
    assert stage.skipped_steps == 1 and stage.step == 3
    assert all(torch.equal(a, b) for a, b in zip(params, stage.field.parameters())), "nothing applied"
    state_after = stage.optimizer.state[next(iter(stage.field.parameters()))]
    assert all(torch.equal(adam[k], state_after[k]) for k in adam), "Adam's moments and step untouched"
    stage.train_step()
    assert stage.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in stage.field.parameters())
    for state in stage.optimizer.state.values():
        assert all(torch.isfinite(v).all() for v in state.values())
    assert any(not torch.equal(a, b) for a, b in zip(params, stage.field.parameters())), "training goes on"
    # the count survives a checkpoint
    path = stage.save_checkpoint(tmp_path / "outline.ckpt")
    again = _stage(tiny_cfg)
    again.load_checkpoint(path)
    assert again.skipped_steps == 1


@BRANCHES
def test_a_nan_gradient_with_a_finite_loss_is_skipped_too(tiny_cfg, branch):
    tiny_cfg.reference_view_prob = 0.0
    with _branch(branch):
        stage = _stage(tiny_cfg)
        stage.train_step()

        def poison(grad):
            return grad * float("inf")

        handle = next(stage.field.parameters()).register_hook(poison)
        before = [p.detach().clone() for p in stage.field.parameters()]
        with SyncCounter() as counter:
            losses = stage.train_step()
        handle.remove()
    if branch == "gpu":
        assert counter.counts["bool"] == 0, "the finiteness check stays on the device"
    assert all(math.isfinite(float(v)) for v in losses.values())
    assert stage.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(before, stage.field.parameters()))


def test_progress_is_throttled_but_previews_and_the_stage_end_always_arrive(tiny_cfg):
    """Steps of 0.1 s on the stage's clock at 4 progress events a second: every third step is
    reported, plus the last; every preview and the stage end arrive."""
    events = []
    tiny_cfg.steps, tiny_cfg.preview_every = 10, 4
    tiny_cfg.preview_views, tiny_cfg.preview_resolution = 2, 16
    stage = _stage(tiny_cfg, callback=events.append)
    assert PROGRESS_RATE_HZ == 4.0
    stage.progress_rate_hz = PROGRESS_RATE_HZ
    ticks = iter(range(10_000))
    stage.clock = lambda: next(ticks) * 0.1  # one reading per step
    stage.run()
    progress = [e for e in events if isinstance(e, Progress)]
    assert [e.step for e in progress] == [1, 4, 7, 10], "at most 4 per second, always the last"
    assert all(math.isfinite(v) and isinstance(v, float) for e in progress for v in e.losses.values())
    assert [e.step for e in events if isinstance(e, Preview)] == [4, 8, 10], "every preview, and the final one"
    assert isinstance(events[-1], StageDone) and events[-1].steps == 10


@pytest.mark.slow
def test_nan_steps_are_counted_in_run_json_and_progress_stays_under_4_per_second(tmp_path, monkeypatch):
    """A tiny job through the runner: a NaN from the Zero123 guidance at one step is skipped
    and counted in run.json; progress arrives at no more than ~4 per second while every
    preview and stage end arrives."""
    pytest.importorskip("diffusers")
    from mpod123.guidance.zero123 import Zero123Guidance
    from mpod123.pipeline.generate import generate
    from tests.tiny_models import small_config

    monkeypatch.setenv("MPOD123_TINY_MODELS", str(tmp_path / "tiny"))
    monkeypatch.setattr(OptimisationStage, "progress_rate_hz", PROGRESS_RATE_HZ)  # production's rate
    original = Zero123Guidance.__call__

    def nan_at_step_2(self, inp):
        losses = original(self, inp)
        return {k: v * float("nan") for k, v in losses.items()} if inp.step == 2 else losses

    monkeypatch.setattr(Zero123Guidance, "__call__", nan_at_step_2)
    from mpod123.camera import orbit_cameras
    from mpod123.bench.synthetic import render_object

    rgba = render_object(orbit_cameras(90.0, 0.0, 2.5, 40.0, 96, 96))[0].numpy()
    from PIL import Image

    photo = tmp_path / "object.png"
    Image.fromarray((rgba * 255 + 0.5).astype("uint8")).save(photo)
    cfg = small_config(4)
    cfg.outline.reference_view_prob = 0.0  # step 2 is a guidance step
    events = []
    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=False)
    try:
        result = generate(photo, tmp_path / "out.glb", config=cfg, tiny=True, device="cpu",
                          callback=lambda e: events.append((time.perf_counter(), e)), workdir=tmp_path / "work")
        restored = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    finally:
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
    assert restored == (True, False), "the runner restores both flags"
    record = json.loads((tmp_path / "work" / "run.json").read_text())
    assert record["skipped_steps"] == {"outline": 1, "detail": 0}
    assert record["deterministic"] is True, "the CPU default"
    assert result.record["status"] == "done"
    for stage in ("outline", "inversion", "detail"):
        times = [t for t, e in events if isinstance(e, Progress) and e.stage == stage]
        last = [e for _, e in events if isinstance(e, Progress) and e.stage == stage][-1]
        assert last.step == last.total, stage
        gaps = [b - a for a, b in zip(times[:-2], times[1:-1])]
        assert all(g >= 0.24 for g in gaps), (stage, gaps)
    previews = [(e.stage, e.step) for _, e in events if isinstance(e, Preview)]
    assert previews == [("matte", 0), ("outline", 2), ("outline", 4), ("detail", 2), ("detail", 4)], "the matte first"
    ends = [e.stage for _, e in events if isinstance(e, StageDone)]
    assert ends == ["outline", "inversion", "detail", "export"]


def test_determinism_defaults_off_on_cuda_sets_cublas_and_restores_both_flags(monkeypatch):
    from mpod123.pipeline.runner import CUBLAS_DETERMINISTIC, deterministic_mode

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert deterministic_mode(None, torch.device("cpu")) is True
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert deterministic_mode(None, torch.device("cuda")) is False
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert deterministic_mode(True, torch.device("cuda")) is True
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_DETERMINISTIC
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    deterministic_mode(True, torch.device("cuda"))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8", "a user's own setting is kept"


def test_fused_adam_takes_the_same_step_as_torchs_default_adam():
    """The GPU branch's optimizer (fused, with found_inf = 0) against the formula the CPU runs."""
    g = torch.Generator().manual_seed(0)
    start = torch.randn(50, generator=g)
    grads = [torch.randn(50, generator=g) for _ in range(5)]
    results = []
    for fused in (None, True):
        p = torch.nn.Parameter(start.clone())
        opt = torch.optim.Adam([p], lr=1e-2, betas=(0.9, 0.99), eps=1e-15, fused=fused)
        for grad in grads:
            p.grad = grad.clone()
            if fused:
                opt.found_inf = torch.zeros(())
            opt.step()
        results.append(p.detach())
    torch.testing.assert_close(results[1], results[0], rtol=1e-6, atol=1e-7)
