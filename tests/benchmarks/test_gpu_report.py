"""gpu_report: the step-by-step JSON record, the targets and the exit code of gpu_check."""

from __future__ import annotations

import json

import pytest

from gpu_report import FAILED, NOTHING_ACCELERATED, OK, StepRecord, compare_targets, exit_code, write_atomic


def test_step_record_is_on_disk_after_every_step_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "r.json"
    rec = StepRecord(path, {"benchmark": "x"})
    assert json.loads(path.read_text()) == {"benchmark": "x", "steps_done": []}
    rec.step("extensions", {"nerfacc": {"installed": True}})
    on_disk = json.loads(path.read_text())
    assert on_disk["steps_done"] == ["extensions"] and on_disk["extensions"]["nerfacc"]["installed"] is True
    rec.step("sds", {"rows": [1, 2]})
    rec.set("seconds", 3.5)
    on_disk = json.loads(path.read_text())
    assert on_disk["steps_done"] == ["extensions", "sds"] and on_disk["sds"]["rows"] == [1, 2] and on_disk["seconds"] == 3.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_a_failed_write_keeps_the_previous_file_whole(tmp_path):
    path = tmp_path / "r.json"
    write_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_atomic(path, {"a": object()})  # not JSON: fails in the middle of writing
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


@pytest.mark.parametrize(("preset", "minutes", "peak", "met", "missed"), [
    ("paper", 9.9, 23.5, True, []),
    ("paper", 10.4, 20.0, False, ["10.4 min > 10 min"]),
    ("paper", 8.0, 25.1, False, ["peak 25.1 GB > 24 GB"]),
    ("paper", 8.0, None, False, ["peak None GB > 24 GB"]),  # no memory figure: not met
    ("fast", 2.9, 30.0, True, []),  # fast has a time target only
    ("fast", 3.2, 10.0, False, ["3.2 min > 3 min"]),
])
def test_targets(preset, minutes, peak, met, missed):
    t = compare_targets({"preset": preset, "extrapolated_total_min": minutes, "peak_gpu_gb": peak})
    assert t["met"] is met and t["missed"] == missed


def test_draft_has_no_target():
    assert compare_targets({"preset": "draft", "extrapolated_total_min": 99.0, "peak_gpu_gb": 99.0}) is None


def _acc(**verdicts):
    return {n: {"verdict": v, "reason": f"{n} is {v}"} for n, v in verdicts.items()}


GOOD = {"sds": {"ok": True, "reason": "fine"}}


def test_nothing_accelerated_is_its_own_code_never_green():
    code, why = exit_code(_acc(tcnn="not installed", nerfacc="unusable", kaolin="not installed",
                               nvdiffrast="not installed"), GOOD, {"paper": None})
    assert code == NOTHING_ACCELERATED == 3 and "nothing accelerated was tested" in why[0] and "nerfacc unusable" in why[0]


def test_all_good_needs_an_accelerator_that_passed():
    code, why = exit_code(_acc(tcnn="pass", nerfacc="pass", kaolin="not installed", nvdiffrast="pass"), GOOD,
                          {"paper": {"met": True, "missed": []}})
    assert (code, why) == (OK, [])


@pytest.mark.parametrize("case", ["accelerator", "check", "target"])
def test_any_failure_or_missed_target_is_exit_1_even_with_nothing_accelerated(case):
    acc = _acc(tcnn="pass" if case != "accelerator" else "fail", nerfacc="not installed")
    checks = {"sds": {"ok": case != "check", "reason": "fp16 NaN"}}
    targets = {"paper": {"met": case != "target", "missed": ["10.4 min > 10 min"]}}
    code, why = exit_code(acc, checks, targets)
    assert code == FAILED and len(why) == 1
    code, _ = exit_code(_acc(tcnn="not installed") if case != "accelerator" else acc, checks, targets)
    assert code == FAILED
