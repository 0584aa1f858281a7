"""The named presets: ``paper`` (the paper's settings, Magic123's where it is silent), ``fast`` (a budget a
user can wait for on one GPU) and ``draft`` (CPU-feasible, for smoke runs)."""

from __future__ import annotations

from .schema import (
    DetailStageConfig,
    HashGridConfig,
    NeRFFieldConfig,
    OccupancyGridConfig,
    OutlineStageConfig,
    PipelineConfig,
    RenderConfig,
    TextualInversionConfig,
)


def detail_preset(name: str) -> DetailStageConfig:
    """Named stage-2 budgets, matching :func:`outline_preset`."""
    if name == "paper":
        return DetailStageConfig()
    if name == "fast":
        cfg = DetailStageConfig(steps=1500, resolution=512)
        cfg.dmtet.resolution = 96
        return cfg
    if name == "draft":
        cfg = DetailStageConfig(steps=200, resolution=64, nvm_mask_resolution=64, preview_every=50, checkpoint_every=50,
                                nvm_camera_pool=24,  # a CPU smoke run: 24 mask renders up front, not 96
                                sdf_lr=1e-2, deform_lr=1e-2)  # a 200-step CPU budget: threestudio's 1e-2
        # the old stage-2 regularisers, background and texture lr: on the CPU benchmark (multi-view
        # supervision, a 32^3 grid, 200 steps) the reference values cost silhouette IoU and Chamfer
        # (docs/benchmarks.md); they are for the diffusion priors, which the CPU cannot show
        cfg.normal_consistency_form, cfg.normal_consistency_weight = "face", 10.0
        cfg.laplacian_form, cfg.laplacian_weight = "squared", 1000.0
        cfg.novel_background, cfg.texture_encoding_lr_scale = "white", 1.0
        cfg.preview_resolution = 64
        cfg.dmtet.resolution = 32
        return cfg
    raise ValueError(f"unknown preset {name!r}: choose one of paper, fast, draft")


def outline_preset(name: str) -> OutlineStageConfig:
    """Named stage-1 budgets.

    ``paper``: the paper's settings. ``fast``: a budget a user can wait for on one
    GPU. ``draft``: small enough to run on a CPU as a smoke test.
    """
    if name == "paper":
        return OutlineStageConfig()
    if name == "fast":
        cfg = OutlineStageConfig(steps=1500, encoding_lr_scale=10.0)
        cfg.render.samples_per_ray = 256
        return cfg
    if name == "draft":
        cfg = OutlineStageConfig(steps=200, lr=1e-2, encoding_lr_scale=1.0, preview_every=50, checkpoint_every=100,
                                 regulariser_rays=256, regulariser_every=4,
                                 # on the CPU benchmark coarse to fine cost stage 2 on one of two seeds
                                 # (docs/benchmarks.md); an 8-level grid's finest cell (0.019) is coarser
                                 # than the fixed 0.01 step
                                 progressive_band=False, normal_eps_cells=None)
        cfg.render = RenderConfig(resolution=32, samples_per_ray=96)
        cfg.occupancy = OccupancyGridConfig(resolution=32, warmup_steps=32, update_every=8)
        cfg.nerf = NeRFFieldConfig(
            hash_grid=HashGridConfig(n_levels=8, log2_hashmap_size=15, base_resolution=8),
            hidden_dim=32,
        )
        cfg.preview_resolution = 64
        cfg.mesh_preview.grid_resolution = 32  # a CPU budget: a preview costs about a step (docs/benchmarks.md)
        return cfg
    raise ValueError(f"unknown preset {name!r}: choose one of paper, fast, draft")


PRESETS = ("paper", "fast", "draft")


def pipeline_preset(name: str) -> PipelineConfig:
    """``paper``: the paper's settings (Magic123's where the paper is silent). ``fast``: a budget
    a user can wait for on one GPU. ``draft``: CPU-feasible, for smoke runs."""
    cfg = PipelineConfig(preset=name, outline=outline_preset(name), detail=detail_preset(name))
    if name == "paper":
        # fresh augmentations (Magic123's), at the old 1000 x 8: Magic123's 3000 x 16 would take about 6.8 of the
        # paper preset's 10 minutes on one H100 by itself (docs/benchmarks.md); reach it with
        # --set inversion.steps=3000 --set inversion.batch_size=16
        cfg.inversion = TextualInversionConfig(steps=1000, batch_size=8, fresh_augmentations=True)
    elif name == "fast":
        cfg.inversion = TextualInversionConfig(steps=300, batch_size=4, augmentations=32)
        cfg.zero123.anneal_steps = 750
        cfg.export.texture_size, cfg.export.target_faces = 1024, 20_000
    elif name == "draft":
        cfg.inversion = TextualInversionConfig(steps=20, batch_size=1, augmentations=4)
        cfg.zero123.anneal_steps = 100
        cfg.preprocess.size = 128
        cfg.export.texture_size, cfg.export.target_faces = 256, 5_000
        cfg.export.obj = False
    return cfg
