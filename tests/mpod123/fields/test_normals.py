"""Density normals: finite differences against fields whose gradient is known, and against autograd."""

from __future__ import annotations

import pytest
import torch

from mpod123.config import NeRFFieldConfig, outline_preset
from mpod123.fields import NeRFField
from mpod123.fields.normals import analytic_gradient, density_normals, finite_difference_gradient


def _points(n: int = 512, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=g) * 1.6 - 0.8


def test_central_differences_are_exact_on_a_quadratic_field():
    """f = x'Ax + b'x: the gradient (A + A')x + b, exactly, whatever the step."""
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 3, generator=g), torch.randn(3, generator=g)
    x = _points()
    grad = finite_difference_gradient(lambda p: ((p @ a) * p).sum(-1) + p @ b, x, eps=0.1)
    assert torch.allclose(grad, x @ (a + a.T) + b, atol=1e-4)


def test_finite_difference_normals_match_a_gaussian_blobs_known_normals():
    """sigma = exp(-|x - c|^2 / 2s^2): the gradient is -(x - c) sigma / s^2, the normal (x - c)/|x - c|."""
    c, s = torch.tensor([0.1, -0.2, 0.05]), 0.4

    def blob(p: torch.Tensor) -> torch.Tensor:
        return torch.exp(-((p - c) ** 2).sum(-1) / (2 * s * s))

    x = _points()
    x = x[(x - c).norm(dim=-1) > 0.05]  # the normal is undefined at the centre
    truth = torch.nn.functional.normalize(x - c, dim=-1)
    known_grad = -(x - c) * blob(x)[:, None] / s**2
    fd = finite_difference_gradient(blob, x, eps=1e-2)
    # second order: the error is eps^2 / 6 times the third derivative, about |grad| / s^2 here
    assert ((fd - known_grad).norm(dim=-1) <= 1e-2**2 / s**2 * (1.0 + known_grad.norm(dim=-1))).all()
    n_fd = density_normals(blob, x, "finite_difference", eps=1e-2)
    n_an = density_normals(blob, x, "analytic")
    assert (n_fd * truth).sum(-1).min() > 0.9999
    assert (n_an * truth).sum(-1).min() > 0.9999
    assert torch.allclose(analytic_gradient(blob, x), known_grad, atol=1e-5)


def test_finite_difference_normals_agree_with_autograd_on_the_nerf_field():
    """At initialisation the field is Magic3D's blob plus a small random hash-grid term: the two
    normals agree closely everywhere; both are differentiable in the field's parameters."""
    torch.manual_seed(0)
    field = NeRFField(outline_preset("draft").nerf)
    x = _points(256) * 0.5
    x = x[x.norm(dim=-1) > 0.05]
    n_fd = field.normals(x, method="finite_difference", eps=1e-3)
    n_an = field.normals(x, method="analytic")
    cos = (n_fd * n_an).sum(-1)
    assert cos.median() > 0.999 and cos.min() > 0.95, (cos.median().item(), cos.min().item())
    # gradients reach the field's parameters (first order only for finite differences)
    loss = (n_fd * torch.tensor([0.0, 0.0, 1.0])).sum()
    table, weight = torch.autograd.grad(loss, [field.encoding.params, field.density_mlp.net[0].weight])
    assert table.abs().sum() > 0 and weight.abs().sum() > 0


def test_a_bad_step_or_method_is_refused():
    with pytest.raises(ValueError, match="positive"):
        finite_difference_gradient(lambda p: p.sum(-1), _points(4), eps=0.0)
    with pytest.raises(ValueError, match="analytic"):
        density_normals(lambda p: p.sum(-1), _points(4), "central")  # type: ignore[arg-type]


def test_nerf_field_config_default_keeps_analytic_normals_for_rendering():
    """The renderer's normal previews still use autograd by default; only the regularisers switch."""
    field = NeRFField(NeRFFieldConfig())
    x = _points(8) * 0.3
    assert torch.allclose(field.normals(x), density_normals(field.density, x, "analytic"))
