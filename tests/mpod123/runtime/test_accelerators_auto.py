"""``backend="auto"`` never picks kaolin (no speed-up, no build for torch 2.13); naming it still works.

kaolin cannot be installed here, so the one thing that would make it runnable, the probe's
answer, is replaced: ``unavailable_reason`` says "can run" for every accelerator. Then the only
thing that keeps ``auto`` off kaolin is the rule under test, while ``auto`` still picks the others.
"""

from __future__ import annotations

import warnings

import pytest

import mpod123.runtime.accelerators as acc


@pytest.fixture
def everything_runs(monkeypatch):
    monkeypatch.setattr(acc, "unavailable_reason", lambda name, device: None)
    acc.forget("kaolin")
    yield
    acc.forget("kaolin")  # probed under the patched reason: the next test probes it for real


def test_auto_does_not_pick_kaolin_even_when_it_could_run(everything_runs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert acc.resolve_backend("auto", "kaolin", "cuda") == "torch"
    assert not [w for w in caught if issubclass(w.category, acc.AcceleratorFallbackWarning)], "by design, not a fallback"
    assert not acc.is_probed("kaolin"), "auto does not even import kaolin"
    reason = acc.fallback_reasons()["kaolin"]
    assert "no faster" in reason and "torch 2.13" in reason and "backend='kaolin'" in reason


def test_a_named_kaolin_is_still_selected_and_auto_picks_the_others(everything_runs):
    assert acc.resolve_backend("kaolin", "kaolin", "cuda") == "kaolin"
    for name in ("tcnn", "nerfacc", "nvdiffrast"):
        assert acc.resolve_backend("auto", name, "cuda") == name
    assert [n for n, a in acc.ACCELERATORS.items() if a.auto_skip] == ["kaolin"]


def test_install_hints_say_what_each_build_needs():
    """tiny-cuda-nn and nvdiffrast 0.4 import torch in their setup, so pip's build isolation
    (a fresh environment without torch) breaks them; nerfacc compiles on first use."""
    hints = {n: a.install_hint for n, a in acc.ACCELERATORS.items()}
    assert "0.18" in hints["kaolin"] and "2.5.1" in hints["kaolin"] and "2.12.1" in hints["kaolin"]
    for name in ("tcnn", "nvdiffrast"):
        assert "--no-build-isolation" in hints[name] and "nvcc" in hints[name]
    assert "nvcc" in hints["nerfacc"] and "ninja" in hints["nerfacc"] and "first use" in hints["nerfacc"]
