"""Coarse to fine on the hash grid: the active band of levels, the finest level's size, and the
finite-difference step that lets the normal smoothness term see the fine levels."""

from __future__ import annotations

import pytest
import torch

from mpod123.camera import orbit_cameras
from mpod123.config import HashGridConfig, NeRFFieldConfig, RenderConfig
from mpod123.fields import HashEncoding, NeRFField
from mpod123.fields.hash_grid import level_cell_size, level_layout
from mpod123.rendering import VolumeRenderer
from mpod123.stages.regularisers import normal_regularisers


def test_the_default_layouts_finest_level_is_4096_cells_across():
    """per_level_scale 2^(8/15) from 16: the 16th level spans 4096 cells (threestudio's "max
    resolution 4096"), not 2048; a cell is 2 / 4095 world units in the [-1, 1] cube."""
    cfg = HashGridConfig()
    scales, resolutions, _, _ = level_layout(cfg)
    assert round(16 * cfg.per_level_scale**15) == 4096
    assert scales[-1] == pytest.approx(4095.0, rel=1e-5) and resolutions[-1] == 4096
    assert level_cell_size(cfg, 15) == pytest.approx(2.0 / 4095.0, rel=1e-5)
    assert level_cell_size(cfg, 7) == pytest.approx(2.0 / (16 * 2 ** (8 * 7 / 15) - 1), rel=1e-4)
    assert 0.01 / level_cell_size(cfg, 15) == pytest.approx(20.5, abs=0.1), "the old fixed step spans 20 cells"


def test_levels_past_the_band_read_as_zero_and_get_no_gradient():
    cfg = HashGridConfig(n_levels=6, log2_hashmap_size=10, base_resolution=4, backend="torch")
    enc = HashEncoding(cfg)
    with torch.no_grad():
        enc.params.uniform_(-1.0, 1.0)
    x = torch.rand(64, 3, generator=torch.Generator().manual_seed(0))
    full = enc(x)
    enc.active_levels = 2
    banded = enc(x)
    assert torch.equal(banded[:, :4], full[:, :4]), "the active levels are unchanged"
    assert (banded[:, 4:] == 0).all() and full[:, 4:].abs().min() > 0
    (grad,) = torch.autograd.grad(banded.sum(), enc.params)
    _, _, sizes, offsets = level_layout(cfg)
    table_grad = grad.view(-1, 2)
    assert table_grad[: offsets[2]].abs().sum() > 0
    assert (table_grad[offsets[2]:] == 0).all(), "no gradient reaches the levels outside the band"
    assert enc.finest_active_cell() == pytest.approx(level_cell_size(cfg, 1))


def test_a_one_cell_step_sees_noise_on_the_fine_levels_about_20x_more_than_the_fixed_step():
    """Noise on levels 10-16 of the paper layout. The smoothness term's rise with the fixed
    0.01 step is about 1/20 of its rise with a step of one finest cell (0.01 spans 20.5 cells),
    and the one-cell step follows the analytic normals (which see every level)."""
    torch.manual_seed(0)
    cfg = NeRFFieldConfig(hash_grid=HashGridConfig(log2_hashmap_size=14, backend="torch"), hidden_dim=32)
    field = NeRFField(cfg)
    renderer = VolumeRenderer(field, None, RenderConfig(samples_per_ray=128, use_occupancy_grid=False), backend="torch")
    cams = orbit_cameras([90.0, 60.0], [0.0, 120.0], 2.5, 40.0, 20)
    cell = level_cell_size(cfg.hash_grid, 15)

    def terms() -> dict[str, float]:
        out = {}
        for name, eps, method in (("fixed", 0.01, "finite_difference"), ("cell", cell, "finite_difference"),
                                  ("analytic", 0.01, "analytic")):
            g = torch.Generator().manual_seed(3)  # the same rays and offsets every time
            t = normal_regularisers(renderer, cams, 192, g, 0.01, with_orientation=False,
                                    normal_method=method, normal_eps=eps)["normal_smoothness"]
            out[name] = float(t.detach())
        return out

    clean = terms()
    _, _, sizes, offsets = level_layout(cfg.hash_grid)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for level in range(10, 16):
            field.encoding.table[offsets[level] : offsets[level] + sizes[level]] += 0.1 * torch.randn(
                sizes[level], 2, generator=g)
    noisy = terms()
    rise = {k: noisy[k] - clean[k] for k in clean}
    assert abs(clean["fixed"] - clean["cell"]) < 0.2 * clean["fixed"], "the smooth blob reads alike at both steps"
    assert rise["cell"] > 10 * rise["fixed"], (clean, noisy)
    assert 0.3 * rise["analytic"] < rise["cell"] < 1.5 * rise["analytic"], (clean, noisy)
