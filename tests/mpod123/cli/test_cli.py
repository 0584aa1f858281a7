"""`mpod123 bench make-dataset | reconstruct`, run in-process and as a console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from PIL import Image

from mpod123.cli.common import EXIT_BAD_INPUT
from mpod123.cli.main import main


def test_reconstruct_writes_metrics_and_contact_sheet(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "out"
    assert main(["bench", "make-dataset", str(data), "--views", "8", "--res", "24"]) == 0
    assert main(["bench", "reconstruct", str(data), "--stage", "outline", "--holdout", "2", "--out", str(out),
                 "--steps", "6", "--res", "16", "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    outline = metrics["outline"]
    assert outline["steps"] == 6 and metrics["held_out_views"] == 2 and metrics["train_views"] == 6
    assert 0.0 <= metrics["silhouette_iou"] <= 1.0 and len(outline["per_view"]) == 2
    assert metrics["silhouette_iou"] == outline["silhouette_iou"] and metrics["stage"] == "outline"
    assert outline["backends"] == {"hash_grid": "torch", "ray_marching": "torch"}
    assert outline["seconds"] > 0
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.size == (2 * 24 + 2, 2 * 24 + 2), "two held-out columns, ground truth over render"
    assert "held-out silhouette IoU" in capsys.readouterr().out


def test_bad_dataset_exits_2_with_a_message(tmp_path, capsys):
    code = main(["bench", "reconstruct", str(tmp_path), "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert code == EXIT_BAD_INPUT
    assert "no transforms_train.json" in capsys.readouterr().err


def test_too_many_held_out_views_exits_2(tmp_path, capsys):
    main(["bench", "make-dataset", str(tmp_path), "--views", "3", "--res", "8"])
    code = main(["bench", "reconstruct", str(tmp_path), "--holdout", "3", "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert code == EXIT_BAD_INPUT
    assert "hold out 3 of 3" in capsys.readouterr().err


def test_console_script_is_installed():
    exe = shutil.which("mpod123") or shutil.which("mpod123", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "pip install -e . must put the mpod123 command on PATH"
    out = subprocess.run([exe, "bench", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "reconstruct" in out.stdout


def test_run_resumable_says_how_to_continue_after_ctrl_c_and_closes_the_bars(tmp_path, capsys):
    """generate and texture share this: Ctrl-C is exit 130 with the --resume hint, never a traceback."""
    from mpod123.cli.common import StageBars, run_resumable

    closed = []

    class Bars(StageBars):
        def close(self):
            closed.append(True)
            super().close()

    def interrupted():
        raise KeyboardInterrupt

    assert run_resumable(Bars(), tmp_path / "x.work", interrupted) is None
    err = capsys.readouterr().err
    assert "interrupted; continue with the same command and --resume" in err and str(tmp_path / "x.work") in err
    assert closed, "the progress bars are closed before the message"
    closed.clear()
    assert run_resumable(Bars(), tmp_path, lambda: 42) == 42 and closed
