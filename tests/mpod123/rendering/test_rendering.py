"""Volume rendering math (Eq. 3-5), the occupancy grid, and skipping vs dense marching."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mpod123.camera import orbit_cameras
from mpod123.config import NeRFFieldConfig, OccupancyGridConfig, RenderConfig, HashGridConfig
from mpod123.fields import NeRFField
from mpod123.rendering import (
    OccupancyGrid,
    VolumeRenderer,
    composite,
    march_rays_reference,
    opacity_mask,
    ray_box_intersection,
)


class ConstantField(nn.Module):
    """Density ``sigma`` and colour ``rgb`` everywhere inside the box."""

    def __init__(self, sigma: float, rgb=(0.2, 0.4, 0.6), bound: float = 1.0) -> None:
        super().__init__()
        self.sigma, self.bound = sigma, bound
        self.rgb = nn.Parameter(torch.tensor(rgb))

    def forward(self, x):
        return torch.full(x.shape[:1], self.sigma, dtype=x.dtype), self.rgb.expand(x.shape[0], 3)

    def density(self, x):
        return torch.full(x.shape[:1], self.sigma, dtype=x.dtype)


def _rays(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(n, 3, generator=g) - 0.5) * 0.8
    origin = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 3.0
    return origin, torch.nn.functional.normalize(target - origin, dim=-1)


@pytest.mark.parametrize("sigma", [0.05, 0.7, 3.0])
def test_constant_density_opacity_is_one_minus_exp(sigma):
    rays_o, rays_d = _rays()
    t_near, t_far = ray_box_intersection(rays_o, rays_d, 1.0)
    length = (t_far - t_near).double()
    samples = march_rays_reference(rays_o.double(), rays_d.double(), 0.013, 1.0)
    field = ConstantField(sigma)
    sig, rgb = field(torch.zeros(len(samples), 3, dtype=torch.float64))
    out = composite(samples, sig, rgb.double(), torch.ones(3, dtype=torch.float64))
    expected = 1.0 - torch.exp(-sigma * length)
    torch.testing.assert_close(out.opacity, expected, atol=1e-5, rtol=0)
    # colour over a white background: c * O + (1 - O)
    c = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)
    torch.testing.assert_close(out.rgb, c * expected[:, None] + (1 - expected[:, None]), atol=1e-5, rtol=0)


def test_weights_sum_to_opacity_and_depth_is_their_mean_distance():
    rays_o, rays_d = _rays(8)
    samples = march_rays_reference(rays_o, rays_d, 0.05, 1.0)
    sig = torch.rand(len(samples)) * 5
    out = composite(samples, sig, torch.rand(len(samples), 3))
    per_ray = torch.zeros(8).index_add(0, samples.ray_indices, out.weights)
    torch.testing.assert_close(per_ray, out.opacity)
    t_near, t_far = ray_box_intersection(rays_o, rays_d, 1.0)
    mean_t = out.depth / out.opacity
    assert ((mean_t >= t_near - 1e-4) & (mean_t <= t_far + 1e-4)).all()


def test_mask_flips_exactly_at_one_half():
    below = torch.nextafter(torch.tensor(0.5), torch.tensor(0.0))
    above = torch.nextafter(torch.tensor(0.5), torch.tensor(1.0))
    assert opacity_mask(torch.stack([below, torch.tensor(0.5), above])).tolist() == [False, True, True]
    # and through the renderer: a slab whose optical depth is exactly ln 2 renders O = 0.5
    rays_o = torch.tensor([[0.0, 0.0, 3.0]], dtype=torch.float64)
    rays_d = torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64)
    samples = march_rays_reference(rays_o, rays_d, 0.01, 1.0)
    for scale, expect in [(1.0 - 1e-6, False), (1.0 + 1e-6, True)]:
        sigma = scale * math.log(2.0) / 2.0  # chord length is 2
        sig = torch.full((len(samples),), sigma, dtype=torch.float64)
        out = composite(samples, sig, torch.zeros(len(samples), 3, dtype=torch.float64))
        assert opacity_mask(out.opacity).item() is expect


def test_gradients_reach_the_density():
    rays_o, rays_d = _rays(4)
    samples = march_rays_reference(rays_o, rays_d, 0.05, 1.0)
    sig = torch.full((len(samples),), 0.5, requires_grad=True)
    out = composite(samples, sig, torch.zeros(len(samples), 3))
    out.opacity.sum().backward()
    assert (sig.grad > 0).all(), "more density anywhere means more opacity"


def _ball_grid(res=16):
    grid = OccupancyGrid(OccupancyGridConfig(resolution=res, warmup_steps=100, update_every=1))
    ball = lambda x: (x.norm(dim=-1) < 0.5).float() * 10.0  # noqa: E731
    grid.update(0, ball, step_size=0.01)
    return grid, ball


def test_occupancy_grid_marks_the_ball_and_follows_nerfacc_layout():
    grid, _ = _ball_grid()
    r = grid.resolution
    centre = (torch.arange(r) + 0.5) / r * 2 - 1
    cx, cy, cz = torch.meshgrid(centre, centre, centre, indexing="ij")
    radius = torch.sqrt(cx**2 + cy**2 + cz**2)
    assert grid.binary[radius < 0.35].all()
    assert not grid.binary[radius > 0.65].any()
    # flat index i*R*R + j*R + k with i along x
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.9, 0.0, 0.0], [0.0, 0.9, 0.0], [2.0, 0.0, 0.0]])
    assert grid.query(pts).tolist() == [True, False, False, False]


def test_occupancy_ema_update_rule():
    cfg = OccupancyGridConfig(resolution=4, warmup_steps=10, update_every=2, ema_decay=0.5, threshold=0.01)
    grid = OccupancyGrid(cfg)
    assert not grid.update(1, lambda x: torch.ones(x.shape[0]), 0.1), "only every update_every steps"
    grid.update(0, lambda x: torch.full((x.shape[0],), 2.0), 0.1)
    torch.testing.assert_close(grid.occs, torch.full((64,), 0.2))
    grid.update(2, lambda x: torch.full((x.shape[0],), 1.0), 0.1)
    torch.testing.assert_close(grid.occs, torch.full((64,), 0.1), msg="max(0.2 * 0.5, 0.1)")
    grid.update(4, lambda x: (x[:, 0] > 0).float() * 10.0, 0.1)
    # cells with x > 0 hold 1.0, the others decayed to 0.05; threshold min(mean, 0.01)
    assert grid.binary.all(), "0.05 still exceeds the 0.01 threshold"
    # past the warm-up a random quarter of the cells plus occupied ones are refreshed: seeded, and enough
    # updates that every empty cell is drawn the three times it needs to decay below the threshold
    gen = torch.Generator().manual_seed(0)
    for step in range(6, 60, 2):
        grid.update(step, lambda x: (x[:, 0] > 0).float() * 10.0, 0.1, gen)
    assert grid.binary[2:].all() and not grid.binary[:2].any()


def test_empty_space_skipping_matches_dense_marching_with_far_fewer_samples():
    torch.manual_seed(0)
    cfg = NeRFFieldConfig(
        hash_grid=HashGridConfig(n_levels=6, log2_hashmap_size=14, base_resolution=8, backend="torch"),
        hidden_dim=32,
        blob_density=40.0,
    )
    field = NeRFField(cfg)
    with torch.no_grad():  # give the colour some structure
        field.encoding.params.normal_(0, 0.5)
    rc = RenderConfig(resolution=48, samples_per_ray=256)
    grid = OccupancyGrid(OccupancyGridConfig(resolution=32, backend="torch"))
    skip = VolumeRenderer(field, grid, rc, backend="torch")
    for update in range(16):  # the warm-up updates of a training run, each with fresh jitter
        grid.update(update * 16, field.density, skip.step_size)
    dense = VolumeRenderer(field, None, RenderConfig(resolution=48, samples_per_ray=256, use_occupancy_grid=False))
    cams = orbit_cameras([90.0, 60.0], [0.0, 130.0], 2.5, 40.0, 48)
    bg = torch.ones(2, 3)
    with torch.no_grad():
        a, b = skip.render(cams, bg), dense.render(cams, bg)
    # The stated tolerance. Skipped cells hold density*step below the grid's threshold,
    # the early stop drops at most 1e-4 of transmittance, and one jittered probe per
    # cell and update can miss the sharp edge of a cell that is only partly inside the
    # surface (as in nerfacc), which shows on a few grazing silhouette rays.
    d_opacity = (a.opacity - b.opacity).abs()
    assert d_opacity.mean() < 0.005 and d_opacity.max() < 0.1
    assert (a.rgb - b.rgb).abs().mean() < 0.005
    assert (a.mask == b.mask).float().mean() > 0.999
    assert a.n_samples * 8 < b.n_samples, (a.n_samples, b.n_samples)


def test_chunking_does_not_change_the_image():
    torch.manual_seed(0)
    field = NeRFField(NeRFFieldConfig(hash_grid=HashGridConfig(n_levels=4, log2_hashmap_size=12, backend="torch")))
    cams = orbit_cameras(80.0, 30.0, 2.5, 40.0, 20)
    outs = []
    for chunk in (37, 100000):
        r = VolumeRenderer(field, None, RenderConfig(samples_per_ray=64, chunk_rays=chunk, use_occupancy_grid=False))
        with torch.no_grad():
            outs.append(r.render(cams, torch.ones(1, 3)))
    torch.testing.assert_close(outs[0].rgb, outs[1].rgb)
    torch.testing.assert_close(outs[0].depth, outs[1].depth)


def test_normals_point_outwards_on_the_initial_blob():
    field = NeRFField(NeRFFieldConfig(hash_grid=HashGridConfig(n_levels=2, log2_hashmap_size=10, backend="torch")))
    with torch.no_grad():
        field.encoding.params.zero_()
    pts = torch.nn.functional.normalize(torch.randn(32, 3), dim=-1) * 0.4
    n = field.normals(pts)
    cos = (n * torch.nn.functional.normalize(pts, dim=-1)).sum(-1)
    assert (cos > 0.99).all(), "with a constant grid the density is radial, so normals are radial"


def test_random_orbit_cameras_stay_in_their_ranges():
    from mpod123.camera import sample_orbit_cameras

    g = torch.Generator().manual_seed(0)
    cams = sample_orbit_cameras(200, (45.0, 105.0), (-180.0, 180.0), (2.0, 3.0), (30.0, 50.0), 16, g)
    polar, az = torch.rad2deg(cams.polar), torch.rad2deg(cams.azimuth)
    assert polar.min() >= 45.0 - 1e-3 and polar.max() <= 105.0 + 1e-3
    assert az.min() < -150 and az.max() > 150, "the whole circle is used"
    assert cams.radius.min() >= 2.0 - 1e-5 and cams.radius.max() <= 3.0 + 1e-5
    assert torch.rad2deg(cams.fov_y).min() >= 30.0 - 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nerfacc's ray marching needs CUDA")
def test_nerfacc_marching_matches_the_torch_reference():
    from mpod123.runtime.accelerators import probe

    if probe("nerfacc") is None:
        pytest.skip("nerfacc is not installed")
    torch.manual_seed(0)
    cfg = NeRFFieldConfig(hash_grid=HashGridConfig(n_levels=6, log2_hashmap_size=14, backend="torch"), blob_density=40.0)
    field = NeRFField(cfg, device="cuda")
    grid = OccupancyGrid(OccupancyGridConfig(resolution=32), device="cuda")
    rc = RenderConfig(resolution=64, samples_per_ray=256)
    ref = VolumeRenderer(field, grid, rc, backend="torch")
    acc = VolumeRenderer(field, grid, rc, backend="nerfacc")
    assert acc.marcher.backend == "nerfacc"
    for update in range(16):
        grid.update(update * 16, field.density, ref.step_size)
    cams = orbit_cameras([90.0, 60.0], [0.0, 130.0], 2.5, 40.0, 64, device="cuda")
    bg = torch.ones(2, 3, device="cuda")
    a, b = ref.render(cams, bg), acc.render(cams, bg)
    # Both march the same grid with the same step; they may place the first step
    # differently, so compare images rather than sample positions.
    assert (a.opacity - b.opacity).abs().mean() < 0.005
    assert (a.rgb - b.rgb).abs().mean() < 0.005
    assert abs(a.n_samples - b.n_samples) < 0.1 * a.n_samples
    (a.rgb.sum() + a.opacity.sum()).backward()
    g_ref = field.encoding.params.grad.clone()
    field.zero_grad()
    (b.rgb.sum() + b.opacity.sum()).backward()
    cos = torch.nn.functional.cosine_similarity(g_ref, field.encoding.params.grad, dim=0)
    assert cos > 0.95


def test_blockwise_early_stop_equals_evaluating_every_step():
    """The marcher stops evaluating opaque rays early; the kept samples must be exactly
    those whose transmittance in front is >= eps when every step is evaluated."""
    from mpod123.rendering.ray_marching import transmittance_before

    torch.manual_seed(0)
    field = NeRFField(NeRFFieldConfig(hash_grid=HashGridConfig(n_levels=4, log2_hashmap_size=12, backend="torch"), blob_density=100.0))
    grid = OccupancyGrid(OccupancyGridConfig(resolution=16))
    grid.fill(True)
    rays_o, rays_d = _rays(200)
    step, eps = 0.02, 1e-3
    got = march_rays_reference(rays_o, rays_d, step, 1.0, grid, field.density, early_stop_eps=eps)
    every = march_rays_reference(rays_o, rays_d, step, 1.0, grid, None)
    with torch.no_grad():
        sig = field.density(every.midpoints(rays_o, rays_d))
    counts = torch.bincount(every.ray_indices, minlength=200)
    first = torch.cumsum(counts, 0) - counts
    col = torch.arange(len(every)) - first[every.ray_indices]
    table = torch.zeros(200, int(counts.max())).index_put((every.ray_indices, col), sig * (every.t_ends - every.t_starts))
    keep = transmittance_before(table)[every.ray_indices, col] >= eps
    assert keep.sum() < 0.8 * len(every), "the field must be opaque enough for the early stop to matter"
    assert torch.equal(got.ray_indices, every.ray_indices[keep])
    torch.testing.assert_close(got.t_starts, every.t_starts[keep])


def test_packed_float64_weights_equal_the_padded_table():
    """The sync-free way (CUDA's default) gives the table's weights: same rays, same prefix sums."""
    from mpod123.rendering.compositing import sample_weights
    from mpod123.rendering.ray_marching import RaySamples

    g = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 300, (64,), generator=g)
    rays = torch.repeat_interleave(torch.arange(64), counts)
    t0 = torch.cat([torch.sort(torch.rand(int(c), generator=g) * 3).values for c in counts])
    samples = RaySamples(rays, t0, t0 + 0.01, 64)
    sigmas = torch.rand(rays.numel(), generator=g) * 50
    table = sample_weights(samples, sigmas, packed=False)
    packed = sample_weights(samples, sigmas, packed=True)
    assert packed.dtype == torch.float32
    torch.testing.assert_close(packed, table, atol=1e-6, rtol=1e-5)
    per_ray = torch.zeros(64).index_add(0, rays, packed)
    assert float(per_ray.max()) <= 1.0 + 1e-5 and float(per_ray.max()) > 0.9, "opaque rays sum to ~1"


def _skipping_renderer(res=32):
    torch.manual_seed(0)
    cfg = NeRFFieldConfig(
        hash_grid=HashGridConfig(n_levels=6, log2_hashmap_size=14, base_resolution=8, backend="torch"),
        hidden_dim=32,
        blob_density=40.0,
    )
    field = NeRFField(cfg)
    with torch.no_grad():
        field.encoding.params.normal_(0, 0.5)
    grid = OccupancyGrid(OccupancyGridConfig(resolution=16, backend="torch"))
    renderer = VolumeRenderer(field, grid, RenderConfig(resolution=res, samples_per_ray=128), backend="torch")
    for update in range(4):
        grid.update(update * 16, field.density, renderer.step_size)
    return renderer


def test_the_gpu_branch_renders_the_same_image_without_reading_sizes_back():
    """Fixed-size gathers (padding of zero length), scatter-add counts and the float64 packed
    prefix sums against the CPU's nonzero, bincount and padded table."""
    from mpod123.runtime.syncs import SyncCounter, gpu_paths

    renderer = _skipping_renderer()
    cams = orbit_cameras([90.0, 50.0], [0.0, 200.0], 2.5, 40.0, 32)
    bg = torch.ones(2, 3)
    with torch.no_grad():
        cpu = renderer.render(cams, bg)
        with gpu_paths():
            renderer.render(cams, bg)  # the first call learns the gathers' sizes
            with SyncCounter() as counter:
                gpu = renderer.render(cams, bg)
    assert counter.total == 0, dict(counter.counts)
    assert gpu.n_samples >= cpu.n_samples, "the capacity holds every sample"
    torch.testing.assert_close(gpu.opacity, cpu.opacity, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gpu.rgb, cpu.rgb, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gpu.depth, cpu.depth, atol=1e-4, rtol=1e-4)
    assert not renderer.marcher.compactor.refresh(), "nothing was cut"


def test_an_overflowing_gather_is_caught_and_the_render_redone():
    from mpod123.runtime.syncs import Compactor, gpu_paths

    renderer = _skipping_renderer()
    renderer.marcher.compactor = Compactor(headroom=1.0, granule=1)  # sized exactly by the first view
    near = orbit_cameras(90.0, 0.0, 1.8, 60.0, 32)  # the object fills the view: many samples
    far = orbit_cameras(90.0, 0.0, 6.0, 20.0, 32)
    with torch.no_grad():
        cpu = renderer.render(near, torch.ones(1, 3))
        with gpu_paths():
            renderer.render(far, torch.ones(1, 3))  # capacities learned on a small view
            renderer.marcher.compactor.refresh()
            cut = renderer.render(near, torch.ones(1, 3))
            assert bool(renderer.marcher.compactor.overflow()), "the lost samples are flagged"
            assert (cut.opacity - cpu.opacity).abs().max() > 0.05
            redone = renderer.marcher.compactor.exact(lambda: renderer.render(near, torch.ones(1, 3)))
    torch.testing.assert_close(redone.opacity, cpu.opacity, atol=1e-5, rtol=1e-4)


def test_the_gpu_branch_grid_update_marks_the_same_ball_without_a_read():
    from mpod123.runtime.syncs import SyncCounter, gpu_paths

    grid, ball = _ball_grid()
    with gpu_paths(), SyncCounter() as counter:
        for step in range(100, 110):  # after warm-up: random cells plus occupied ones
            grid.update(step, ball, step_size=0.01)
    assert counter.total == 0, dict(counter.counts)
    r = grid.resolution
    centre = (torch.arange(r) + 0.5) / r * 2 - 1
    cx, cy, cz = torch.meshgrid(centre, centre, centre, indexing="ij")
    radius = torch.sqrt(cx**2 + cy**2 + cz**2)
    assert grid.binary[radius < 0.35].all() and not grid.binary[radius > 0.65].any()
