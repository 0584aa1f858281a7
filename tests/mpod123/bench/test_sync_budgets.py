"""Each training step stays within its host-sync budget on the GPU's branches (issue 28):
stage 1 <= 2, textual inversion <= 1, stage 2 <= 4, counted with the project's SyncCounter."""

from __future__ import annotations

import pytest

pytest.importorskip("diffusers")

from mpod123.bench.sync_steps import BUDGETS, count_steps, inversion_scenario, stage1_scenario, stage2_scenario  # noqa: E402


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _check(result):
    assert len(result.per_step) == 3
    assert result.worst <= BUDGETS[result.name], (result.per_step, dict(result.sites))


def test_a_stage1_step_takes_at_most_two_host_syncs(tmp_path):
    _check(count_steps("stage1", stage1_scenario(tmp_path).train_step, 3))


def test_a_textual_inversion_step_takes_at_most_one_host_sync(tmp_path):
    _, step = inversion_scenario(tmp_path)
    _check(count_steps("inversion", step, 3))


def test_a_stage2_step_takes_at_most_four_host_syncs(tmp_path):
    stage = stage2_scenario(tmp_path)
    result = count_steps("stage2", stage.train_step, 3)
    _check(result)
    assert stage.pool_masks is not None, "the stage-1 masks come from the camera pool"
    assert sum(result.twin_per_step) > 0, "the torch rasterizer's syncs are counted apart, not lost"
