"""Hash-grid encoding: layout, interpolation, hashing, gradients, and tinycudann parity."""

from __future__ import annotations

import warnings

import pytest
import torch

from mpod123.runtime.accelerators import AcceleratorFallbackWarning, BackendUnavailable, probe, resolve_backend
from mpod123.config import HashGridConfig
from mpod123.fields import HashEncoding, hash_grid_reference, level_layout

TINY = HashGridConfig(n_levels=3, n_features_per_level=2, log2_hashmap_size=6, base_resolution=2, per_level_scale=2.0)


def test_layout_follows_tinycudann():
    scales, res, sizes, offsets = level_layout(HashGridConfig())
    # base_resolution counts vertices: scale 15 and resolution 16 at level 0
    assert scales[0] == 15.0 and res[0] == 16
    assert sizes[0] == 16**3  # dense level, already a multiple of 8
    assert all(s % 8 == 0 for s in sizes)
    assert sizes[-1] == 1 << 19 and res[-1] > 2000  # hashed top level reaching ~2048
    assert offsets == [sum(sizes[:i]) for i in range(len(sizes))]


def _python_index(c, res, size):
    """tinycudann's grid_index in plain Python integers, for comparison."""
    if res**3 <= size:
        idx = c[0] + c[1] * res + c[2] * res * res
    else:
        idx = (c[0] * 1 ^ c[1] * 2654435761 ^ c[2] * 805459861) & 0xFFFFFFFF
    return idx % size


def test_values_match_a_plain_python_trilinear_lookup():
    cfg = TINY
    torch.manual_seed(0)
    scales, res, sizes, offsets = level_layout(cfg)
    assert any(r**3 > s for r, s in zip(res, sizes)), "the tiny config must exercise a hashed level"
    table = torch.randn(sum(sizes), cfg.n_features_per_level, dtype=torch.float64)
    x = torch.rand(7, 3, dtype=torch.float64)
    got = hash_grid_reference(x, table, cfg)
    for n in range(x.shape[0]):
        for level in range(cfg.n_levels):
            pos = [float(v) * scales[level] + 0.5 for v in x[n]]
            base = [int(p // 1) for p in pos]
            frac = [p - b for p, b in zip(pos, base)]
            acc = torch.zeros(cfg.n_features_per_level, dtype=torch.float64)
            for corner in range(8):
                bits = [(corner >> d) & 1 for d in range(3)]
                w = 1.0
                for d in range(3):
                    w *= frac[d] if bits[d] else 1.0 - frac[d]
                idx = _python_index([base[d] + bits[d] for d in range(3)], res[level], sizes[level])
                acc += w * table[offsets[level] + idx]
            f = cfg.n_features_per_level
            torch.testing.assert_close(got[n, level * f : (level + 1) * f], acc)


def test_dense_level_reproduces_a_linear_function():
    """Trilinear interpolation is exact on linear functions of the grid coordinates."""
    cfg = HashGridConfig(n_levels=1, n_features_per_level=1, log2_hashmap_size=12, base_resolution=9)
    (scale,), (res,), (size,), _ = level_layout(cfg)
    assert res**3 <= size
    k = torch.arange(size, dtype=torch.float64)
    cx, cy, cz = k % res, (k // res) % res, k // (res * res)
    table = (0.3 * cx - 0.7 * cy + 1.1 * cz + 2.0)[:, None]
    x = torch.rand(50, 3, dtype=torch.float64) * ((res - 1.6) / scale)  # keep all corners inside the grid
    pos = x * scale + 0.5
    expected = 0.3 * pos[:, 0] - 0.7 * pos[:, 1] + 1.1 * pos[:, 2] + 2.0
    torch.testing.assert_close(hash_grid_reference(x, table, cfg)[:, 0], expected)


def test_gradcheck_table_and_positions():
    torch.manual_seed(1)
    _, _, sizes, _ = level_layout(TINY)
    table = torch.randn(sum(sizes), 2, dtype=torch.float64, requires_grad=True)
    # stay away from cell boundaries, where the trilinear weights have kinks
    x = (torch.rand(5, 3, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t, p: hash_grid_reference(p, t, TINY), (table, x), eps=1e-6, atol=1e-5)


def test_module_torch_backend_and_state_layout():
    enc = HashEncoding(HashGridConfig(n_levels=4, log2_hashmap_size=10, base_resolution=4, backend="torch"))
    assert enc.backend == "torch"
    assert list(enc.state_dict()) == ["params"]
    assert enc.params.abs().max() <= 1e-4
    y = enc(torch.rand(10, 3))
    assert y.shape == (10, 8)
    y.sum().backward()
    assert enc.params.grad.abs().sum() > 0


def test_named_accelerator_without_cuda_raises_with_install_hint():
    if torch.cuda.is_available() and probe("tcnn") is not None:
        pytest.skip("tinycudann can run here")
    with pytest.raises(BackendUnavailable, match="tinycudann|tiny-cuda-nn"):
        resolve_backend("tcnn", "tcnn", "cpu" if not torch.cuda.is_available() else "cuda")
    with pytest.raises(ValueError, match="backend must be"):
        resolve_backend("cuda", "tcnn", "cpu")


def test_auto_falls_back_with_one_warning():
    import mpod123.runtime.accelerators as opt

    opt.forget("tcnn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_backend("auto", "tcnn", "cpu") == "torch"
        assert resolve_backend("auto", "tcnn", "cpu") == "torch"
    fallbacks = [w for w in caught if issubclass(w.category, AcceleratorFallbackWarning)]
    assert len(fallbacks) == 1


@pytest.mark.skipif(not torch.cuda.is_available() or probe("tcnn") is None, reason="needs CUDA and tinycudann")
def test_tcnn_parity_values_and_gradients():
    cfg = HashGridConfig(n_levels=8, log2_hashmap_size=14, base_resolution=8, per_level_scale=1.6)
    ref = HashEncoding(HashGridConfig(**{**cfg.__dict__, "backend": "torch"}), device="cuda")
    acc = HashEncoding(HashGridConfig(**{**cfg.__dict__, "backend": "tcnn"}), device="cuda")
    with torch.no_grad():
        ref.params.normal_(0, 0.1)
        acc.params.copy_(ref.params)
    x = torch.rand(4096, 3, device="cuda")
    y_ref, y_acc = ref(x), acc(x)
    torch.testing.assert_close(y_acc, y_ref, atol=1e-5, rtol=1e-4)
    w = torch.randn_like(y_ref)
    (y_ref * w).sum().backward()
    (y_acc * w).sum().backward()
    torch.testing.assert_close(acc.params.grad, ref.params.grad, atol=1e-4, rtol=1e-3)
