"""Our side of each accelerator library's contract, checked on the CPU.

tinycudann and kaolin cannot run here, so each gets the smallest stand-in that
has the library's real surface (named below with the version it mirrors); the
real parity tests live beside the torch references and skip without CUDA.
nerfacc installs here without its CUDA extension, so its probe is tested for real.
"""

from __future__ import annotations

import copy
import math
import sys
import types
import warnings

import pytest
import torch

import mpod123.runtime.accelerators as opt
from mpod123.config import HashGridConfig
from mpod123.fields import HashEncoding, hash_grid_reference
from mpod123.geometry import Mesh, marching_tets, marching_tets_reference, tet_grid

# ----------------------------------------------------------------- tinycudann


def _tcnn_standin() -> types.ModuleType:
    """A module with tinycudann's torch-binding surface (bindings/torch/tinycudann/modules.py,
    tiny-cuda-nn 1.7): ``Encoding(n_input_dims, encoding_config, seed=1337, dtype=None)`` is an
    ``nn.Module`` with ``native_tcnn_module`` (``n_params()``, ``n_output_dims()``,
    ``param_precision()``), ``params`` (one flat registered Parameter), ``n_input_dims``,
    ``n_output_dims``, ``dtype``, ``seed``, ``loss_scale`` -- and no ``n_params`` attribute.
    Its forward runs the HashGrid formula through our reference, with fp32 output as tcnn
    gives for ``dtype=torch.float32``."""

    class Native:
        def __init__(self, config: dict) -> None:
            self.config = config

        def n_params(self) -> int:
            # tcnn's GridEncoding: per level, min(next multiple of 8 of res^3, 2^log2), times features
            c, total = self.config, 0
            for level in range(c["n_levels"]):
                scale = math.exp2(level * math.log2(c["per_level_scale"])) * c["base_resolution"] - 1.0
                res = math.ceil(scale) + 1
                total += min((res**3 + 7) // 8 * 8, 1 << c["log2_hashmap_size"])
            return total * c["n_features_per_level"]

        def n_output_dims(self) -> int:
            return self.config["n_levels"] * self.config["n_features_per_level"]

        def param_precision(self) -> str:
            return "Fp32"

    class Encoding(torch.nn.Module):
        def __init__(self, n_input_dims, encoding_config, seed=1337, dtype=None):
            super().__init__()
            self.n_input_dims = n_input_dims
            self.encoding_config = encoding_config
            self.native_tcnn_module = Native(encoding_config)
            self.n_output_dims = self.native_tcnn_module.n_output_dims()
            self.dtype = dtype if dtype is not None else torch.float16
            self.seed = seed
            self.loss_scale = 128.0 if self.dtype == torch.float16 else 1.0
            initial = torch.zeros(self.native_tcnn_module.n_params(), dtype=torch.float32)
            self.params = torch.nn.Parameter(initial, requires_grad=True)
            self.register_parameter(name="params", param=self.params)

        def forward(self, x):
            c = self.encoding_config
            cfg = HashGridConfig(
                n_levels=c["n_levels"], n_features_per_level=c["n_features_per_level"],
                log2_hashmap_size=c["log2_hashmap_size"], base_resolution=c["base_resolution"],
                per_level_scale=c["per_level_scale"],
            )
            table = self.params.view(-1, c["n_features_per_level"])
            return hash_grid_reference(x.float(), table, cfg).to(self.dtype)

    module = types.ModuleType("tinycudann")
    module.Encoding = Encoding
    module.__version__ = "1.7"
    return module


@pytest.fixture
def tcnn_standin(monkeypatch):
    import mpod123.fields.hash_grid as hg

    module = _tcnn_standin()
    monkeypatch.setattr(hg, "probe", lambda name: module if name == "tcnn" else None)
    monkeypatch.setattr(hg, "resolve_backend", lambda requested, accelerator, device: accelerator)
    return module


def test_standin_has_no_n_params_attribute_like_tinycudann():
    enc = _tcnn_standin().Encoding(3, {"n_levels": 2, "n_features_per_level": 2, "log2_hashmap_size": 8,
                                       "base_resolution": 4, "per_level_scale": 2.0}, dtype=torch.float32)
    assert not hasattr(enc, "n_params")


def test_tcnn_wrapper_builds_and_trains_against_tinycudanns_surface(tcnn_standin):
    cfg = HashGridConfig(n_levels=4, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4,
                         per_level_scale=2.0, backend="tcnn")
    enc = HashEncoding(cfg)
    assert enc.backend == "tcnn"
    assert enc.tcnn_module.params is enc.params, "tinycudann reads our one flat parameter"
    assert [n for n, _ in enc.named_parameters()] == ["params"], "saved once, one Parameter for Adam"
    with torch.no_grad():
        enc.params.normal_(0, 0.1)
    x = torch.rand(256, 3, generator=torch.Generator().manual_seed(0))
    y = enc(x)
    assert y.dtype == torch.float32 and y.shape == (256, 8)
    torch.testing.assert_close(y, hash_grid_reference(x, enc.table, cfg))
    opt_ = torch.optim.Adam(enc.parameters(), lr=1e-2)
    before = enc.params.detach().clone()
    (y**2).sum().backward()
    assert enc.params.grad is not None and enc.params.grad.abs().sum() > 0
    opt_.step()
    assert not torch.equal(before, enc.params.detach())
    clone = copy.deepcopy(enc)
    torch.testing.assert_close(clone(x), enc(x))
    assert clone.tcnn_module.params is clone.params and clone.params is not enc.params


def test_tcnn_wrapper_refuses_a_layout_mismatch(tcnn_standin, monkeypatch):
    native = tcnn_standin.Encoding(3, {"n_levels": 1, "n_features_per_level": 2, "log2_hashmap_size": 4,
                                       "base_resolution": 2, "per_level_scale": 2.0}).native_tcnn_module
    monkeypatch.setattr(type(native), "n_params", lambda self: 8)
    with pytest.raises(RuntimeError, match="tinycudann allocates 8"):
        HashEncoding(HashGridConfig(n_levels=2, log2_hashmap_size=8, base_resolution=4, backend="tcnn"))


# ---------------------------------------------------------------------- kaolin

# kaolin 0.13-0.17, kaolin/ops/conversions/tetmesh.py: edge order, case table
# (inside = sdf > 0, vertex v adds 2^v to the case) and its vertex construction.
_KAOLIN_EDGES = [0, 1, 0, 2, 0, 3, 1, 2, 1, 3, 2, 3]
_KAOLIN_TRIANGLES = [
    [-1, -1, -1, -1, -1, -1], [1, 0, 2, -1, -1, -1], [4, 0, 3, -1, -1, -1], [1, 4, 2, 1, 3, 4],
    [3, 1, 5, -1, -1, -1], [2, 3, 0, 2, 5, 3], [1, 4, 0, 1, 5, 4], [4, 2, 5, -1, -1, -1],
    [4, 5, 2, -1, -1, -1], [4, 1, 0, 4, 5, 1], [3, 2, 0, 3, 5, 2], [1, 3, 5, -1, -1, -1],
    [4, 1, 2, 4, 3, 1], [3, 0, 4, -1, -1, -1], [2, 0, 1, -1, -1, -1], [-1, -1, -1, -1, -1, -1],
]
_KAOLIN_COUNTS = [0, 1, 1, 2, 1, 2, 2, 1, 1, 2, 2, 1, 2, 1, 1, 0]


def _kaolin_marching_tetrahedra(vertices, tets, sdf):
    """Batched like kaolin: (B, V, 3), (T, 4), (B, V) -> ([verts], [faces]) lists."""
    out_v, out_f = [], []
    for v, s in zip(vertices, sdf):
        occ = s > 0
        occ4 = occ[tets.reshape(-1)].reshape(-1, 4)
        n_in = occ4.sum(-1)
        valid = (n_in > 0) & (n_in < 4)
        edges = tets[valid][:, torch.tensor(_KAOLIN_EDGES)].reshape(-1, 2)
        edges = torch.stack([edges.min(-1).values, edges.max(-1).values], -1)
        unique, idx_map = torch.unique(edges, dim=0, return_inverse=True)
        crossing = occ[unique.reshape(-1)].reshape(-1, 2).sum(-1) == 1
        mapping = torch.full((unique.shape[0],), -1, dtype=torch.long)
        mapping[crossing] = torch.arange(int(crossing.sum()))
        idx_map = mapping[idx_map].reshape(-1, 6)
        ends = unique[crossing]
        pe, se = v[ends.reshape(-1)].reshape(-1, 2, 3), s[ends.reshape(-1)].reshape(-1, 2, 1).clone()
        se[:, -1] *= -1
        w = torch.flip(se, [1]) / se.sum(1, keepdim=True)
        verts = (pe * w).sum(1)
        code = (occ4[valid] * (2 ** torch.arange(4))).sum(-1)
        table, counts = torch.tensor(_KAOLIN_TRIANGLES), torch.tensor(_KAOLIN_COUNTS)[code]
        faces = torch.cat([
            torch.gather(idx_map[counts == 1], 1, table[code[counts == 1]][:, :3]).reshape(-1, 3),
            torch.gather(idx_map[counts == 2], 1, table[code[counts == 2]][:, :6]).reshape(-1, 3),
        ])
        out_v.append(verts)
        out_f.append(faces)
    return out_v, out_f


@pytest.fixture
def kaolin_standin(monkeypatch):
    mt = sys.modules["mpod123.geometry.marching_tets"]  # the package re-exports a function of that name

    module = types.SimpleNamespace(
        ops=types.SimpleNamespace(conversions=types.SimpleNamespace(marching_tetrahedra=_kaolin_marching_tetrahedra)),
        __version__="0.17.0",
    )
    monkeypatch.setattr(mt, "probe", lambda name: module if name == "kaolin" else None)
    monkeypatch.setattr(mt, "resolve_backend", lambda requested, accelerator, device: accelerator)
    return module


def _outward_fraction(mesh: Mesh) -> float:
    """Share of faces whose normal points away from the torus' core circle (radius 0.5 in xz)."""
    c = mesh.vertices[mesh.faces].mean(1)
    ring = torch.nn.functional.normalize(torch.stack([c[:, 0], torch.zeros_like(c[:, 1]), c[:, 2]], -1), dim=-1) * 0.5
    return float(((mesh.face_normals() * (c - ring)).sum(-1) > 0).float().mean())


def test_kaolin_wrapper_returns_outward_faces_for_kaolins_winding(kaolin_standin):
    g = tet_grid(12)
    v = g.vertices
    sdf = torch.stack([torch.sqrt(v[:, 0] ** 2 + v[:, 2] ** 2) - 0.5, v[:, 1]], -1).norm(dim=-1) - 0.25
    ref = marching_tets_reference(v, sdf, g.tets)
    raw_v, raw_f = _kaolin_marching_tetrahedra(v[None], g.tets.long(), -sdf[None])
    raw = Mesh(raw_v[0], raw_f[0])
    assert _outward_fraction(raw) < 0.01, "the stand-in reproduces kaolin's inward winding"
    assert float(raw.signed_volume()) < 0
    acc = marching_tets(v, sdf, g.tets, backend="kaolin")
    torch.testing.assert_close(acc.vertices, ref.vertices)  # same vertices, same order
    assert acc.n_faces == ref.n_faces
    assert _outward_fraction(acc) == 1.0 and _outward_fraction(ref) == 1.0
    assert float(acc.signed_volume()) == pytest.approx(float(ref.signed_volume()), rel=1e-5)
    assert float(acc.signed_volume()) > 0


# --------------------------------------------------------------------- nerfacc


def test_nerfacc_without_its_extension_falls_back_to_torch_with_the_reason(monkeypatch):
    """nerfacc 0.5.3 is installed (the test extras), but this machine has no built extension:
    ``import nerfacc`` works, the first call would fail. The probe loads the extension now."""
    nerfacc = pytest.importorskip("nerfacc", reason="nerfacc is in the test extras: pip install -e '.[test]'")
    assert nerfacc.__version__.startswith("0.5")
    opt.forget("nerfacc")
    cuda = torch.device("cuda")  # a CUDA run; the extension check comes before any CUDA call
    if torch.cuda.is_available() and opt.probe_extension("nerfacc") is None:
        pytest.skip("nerfacc's extension loads here")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert opt.resolve_backend("auto", "nerfacc", cuda) == "torch"
    reason = opt.fallback_reasons()["nerfacc"]
    assert "CUDA extension" in reason, reason
    fallbacks = [str(w.message) for w in caught if issubclass(w.category, opt.AcceleratorFallbackWarning)]
    assert len(fallbacks) == 1 and "CUDA extension" in fallbacks[0]
    with pytest.raises(opt.BackendUnavailable, match="CUDA extension"):
        opt.resolve_backend("nerfacc", "nerfacc", cuda)
    # a CPU run never touches the extension
    assert "needs a CUDA device" in opt.unavailable_reason("nerfacc", "cpu")


def test_nerfacc_path_jitters_from_the_stage_generator(monkeypatch):
    """nerfacc 0.5.3's ``OccGridEstimator.sampling(stratified=True)`` jitters with the global RNG
    (``near = max(near_plane, t_min) + rand_like * step``). Our call passes the jitter as
    ``t_min``, drawn from the stage's generator, so a resumed run marches the same samples."""
    import mpod123.rendering.ray_marching as rm
    from mpod123.config import OccupancyGridConfig
    from mpod123.rendering import OccupancyGrid

    calls = []

    class Estimator:  # OccGridEstimator.sampling's signature (nerfacc 0.5.3), recording its arguments
        def sampling(self, rays_o, rays_d, sigma_fn=None, alpha_fn=None, near_plane=0.0, far_plane=1e10,
                     t_min=None, t_max=None, render_step_size=1e-3, early_stop_eps=1e-4, alpha_thre=0.0,
                     stratified=False, cone_angle=0.0):
            calls.append({"t_min": t_min, "stratified": stratified, "step": render_step_size})
            empty = torch.zeros(0)
            return empty.long(), empty, empty

    monkeypatch.setattr(rm, "resolve_backend", lambda requested, accelerator, device: "torch")
    grid = OccupancyGrid(OccupancyGridConfig(resolution=8))
    marcher = rm.RayMarcher(grid, 0.05, 1.0)
    marcher.backend, marcher.estimator = "nerfacc", Estimator()
    rays_o, rays_d = torch.zeros(16, 3) + torch.tensor([0.0, 0.0, 3.0]), torch.tensor([0.0, 0.0, -1.0]).expand(16, 3)
    torch.manual_seed(123)
    global_state = torch.get_rng_state()
    for _ in range(2):
        marcher.march(rays_o, rays_d, stratified=True, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), global_state), "the global RNG is not touched"
    a, b = calls
    assert not a["stratified"] and a["step"] == 0.05
    torch.testing.assert_close(a["t_min"], torch.rand(16, generator=torch.Generator().manual_seed(7)) * 0.05)
    assert torch.equal(a["t_min"], b["t_min"]), "same generator state, same samples"
    marcher.march(rays_o, rays_d, stratified=False)
    assert calls[-1]["t_min"] is None
