"""NeRF-synthetic transforms.json: round trip, Blender convention, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mpod123.camera import orbit_cameras
from mpod123.bench.dataset import DatasetError, MultiViewDataset, read_nerf_synthetic, write_nerf_synthetic
from mpod123.bench.synthetic import render_object, turntable_dataset


def test_round_trip(tmp_path):
    ds = turntable_dataset(6, 24)
    write_nerf_synthetic(tmp_path, ds)
    back = read_nerf_synthetic(tmp_path)
    assert len(back) == 6 and (back.cameras.width, back.cameras.height) == (24, 24)
    torch.testing.assert_close(back.cameras.c2w, ds.cameras.c2w, atol=1e-5, rtol=0)
    torch.testing.assert_close(back.cameras.fov_y, ds.cameras.fov_y)
    assert (back.images - ds.images).abs().max() <= 0.5 / 255 + 1e-6


def test_blender_frame_is_converted_to_our_world(tmp_path):
    """A hand-written Blender front camera must render exactly like our reference camera."""
    cam = orbit_cameras(90.0, 0.0, 2.5, 40.0, 32)
    rgba = render_object(cam)[0]
    (tmp_path / "train").mkdir()
    Image.fromarray((rgba.numpy() * 255 + 0.5).astype(np.uint8), "RGBA").save(tmp_path / "train" / "front.png")
    blender_front = [[1, 0, 0, 0], [0, 0, -1, -2.5], [0, 1, 0, 0], [0, 0, 0, 1]]
    meta = {"camera_angle_x": np.deg2rad(40.0), "frames": [{"file_path": "./train/front", "transform_matrix": blender_front}]}
    (tmp_path / "transforms_train.json").write_text(json.dumps(meta))
    ds = read_nerf_synthetic(tmp_path)
    torch.testing.assert_close(ds.cameras.c2w, cam.c2w, atol=1e-6, rtol=0)
    assert (render_object(ds.cameras) - rgba).abs().max() < 1e-5


def test_non_square_field_of_view(tmp_path):
    (tmp_path / "a.png").parent.mkdir(exist_ok=True)
    Image.new("RGBA", (40, 20)).save(tmp_path / "a.png")
    meta = {"camera_angle_x": 1.0, "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}]}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    ds = read_nerf_synthetic(tmp_path)
    assert (ds.cameras.width, ds.cameras.height) == (40, 20)
    assert float(ds.cameras.fov_y[0]) == pytest.approx(2 * np.arctan(np.tan(0.5) * 0.5))


@pytest.mark.parametrize(
    "meta, files, message",
    [
        (None, {}, "no transforms_train.json"),
        ("{not json", {}, "not a NeRF-synthetic"),
        ({"camera_angle_x": 0.7, "frames": []}, {}, "no frames"),
        ({"camera_angle_x": 0.7, "frames": [{"file_path": "./missing", "transform_matrix": np.eye(4).tolist()}]}, {}, "missing image"),
        ({"camera_angle_x": 0.7, "frames": [{"file_path": "../escape", "transform_matrix": np.eye(4).tolist()}]}, {}, "outside"),
        ({"camera_angle_x": 0.7, "frames": [{"file_path": "bad", "transform_matrix": np.eye(4).tolist()}]}, {"bad.png": b"nope"}, "cannot read image"),
        ({"camera_angle_x": 0.7, "frames": [{"file_path": "x", "transform_matrix": [[1, 0], [0, 1]]}]}, {}, "4x4"),
    ],
)
def test_bad_datasets_raise_clear_errors(tmp_path, meta, files, message):
    if meta is not None:
        (tmp_path / "transforms.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(DatasetError, match=message):
        read_nerf_synthetic(tmp_path)


def test_holdout_split_is_spread_and_disjoint():
    ds = turntable_dataset(12, 8)
    train, held = ds.split_holdout(4)
    assert len(train) == 8 and len(held) == 4
    assert not set(train.names) & set(held.names)
    held_idx = sorted(int(n.split("_")[1]) for n in held.names)
    assert min(np.diff(held_idx)) >= 2, held_idx
    with pytest.raises(DatasetError):
        ds.split_holdout(12)


def test_dataset_validates_lengths():
    ds = turntable_dataset(2, 8)
    with pytest.raises(DatasetError):
        MultiViewDataset(ds.images, ds.cameras, ["only one"])
