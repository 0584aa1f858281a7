"""Typed configuration with the paper's defaults. Every knob a stage reads lives here as a dataclass field with a docstring-style
comment, so a run is fully described by one object that can be written to
``run.json`` and read back (``to_dict`` / ``from_dict``). Loss weights are fields,
never keys assembled from strings.

The defaults follow the MPOD123 paper (CVPR 2024) and, where the paper is
silent, Magic123 / stable-dreamfusion, which the paper builds on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from .backends import HashGridBackend, MarcherBackend, MarchingTetsBackend, RasterizerBackend
from .priors import StableDiffusionConfig, TextualInversionConfig, Zero123Config  # noqa: F401 (re-exported)
BackgroundKind = Literal["white", "black", "random"]


@dataclass
class CameraConfig:
    """Where the cameras sit. Angles are in degrees, the radius in world units."""

    radius: float = 2.5
    """Distance of every orbit camera from the origin (paper: 2.5)."""
    fov_deg: float = 40.0
    """Vertical field of view (paper: 40 degrees)."""
    reference_polar_deg: float = 90.0
    """Polar angle of the reference view, measured from +Y (90 = on the equator)."""
    reference_azimuth_deg: float = 0.0
    """Azimuth of the reference view (0 = on +Z, looking at the object's front)."""


@dataclass
class ViewSamplingConfig:
    """How novel views are drawn for the guidance (uniform in each range)."""

    polar_range_deg: tuple[float, float] = (45.0, 135.0)
    """Polar range from +Y, elevation -45..45. The paper puts the reference view at the centre
    of the camera range (polar 90); Magic123 samples theta in [45, 135]. (45..105 is
    stable-dreamfusion's text-to-3D default, which has no reference view.)"""
    azimuth_range_deg: tuple[float, float] = (-180.0, 180.0)
    """Azimuth range; the full circle by default."""
    radius_range: tuple[float, float] = (2.5, 2.5)
    """Camera distance range (paper: fixed 2.5)."""
    fov_range_deg: tuple[float, float] = (40.0, 40.0)
    """Vertical field-of-view range (paper: fixed 40)."""
    batch_size: int = 1
    """Novel views rendered per step."""


@dataclass
class HashGridConfig:
    """Multi-resolution hash encoding (Instant-NGP), in tiny-cuda-nn's conventions."""

    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 1.4472692374403782
    """Growth factor between levels: 2^(8/15), so the 16th level has 16 x 2^8 = 4096 cells across
    the field's cube (a cell of 2 x bound / 4096, about 5e-4 world units), threestudio's value
    ("max resolution 4096"). stable-dreamfusion and Magic123 stop at 2048 x bound (2^(7/15))."""
    backend: HashGridBackend = "auto"
    """"torch" (reference, any device), "tcnn" (tinycudann, CUDA) or "auto"."""


@dataclass
class NeRFFieldConfig:
    """Density and colour networks on a shared hash grid."""

    hash_grid: HashGridConfig = field(default_factory=HashGridConfig)
    hidden_dim: int = 64
    """Width of the density and colour MLPs."""
    n_hidden_layers: int = 1
    """Hidden layers in each MLP."""
    geo_feat_dim: int = 15
    """Features passed from the density MLP to the colour MLP."""
    bound: float = 1.0
    """The field lives in the cube [-bound, bound]^3; the object in the unit sphere."""
    blob_density: float = 10.0
    """Magic3D density blob: scale of the bias added to the raw density at the centre."""
    blob_radius: float = 0.5
    """Magic3D density blob: radius at which the bias crosses zero."""


@dataclass
class OccupancyGridConfig:
    """Empty-space skipping grid, with nerfacc OccGridEstimator's update rule."""

    resolution: int = 64
    update_every: int = 16
    """Update the grid every N steps."""
    warmup_steps: int = 256
    """Before this step every cell is re-evaluated at each update; after it, a quarter
    of all cells at random plus a quarter as many occupied cells."""
    ema_decay: float = 0.95
    threshold: float = 0.01
    """A cell is occupied when density * step size exceeds min(mean, threshold)."""
    backend: MarcherBackend = "auto"
    """"torch" (reference, any device), "nerfacc" (CUDA) or "auto"."""


@dataclass
class RenderConfig:
    """Volume rendering of the NeRF."""

    resolution: int = 128
    """Training render size in pixels (paper: 128 in stage 1)."""
    samples_per_ray: int = 512
    """Marching step is the AABB diagonal divided by this."""
    early_stop_eps: float = 1e-4
    """Stop marching a ray once its transmittance falls below this."""
    alpha_threshold: float = 0.0
    """Drop samples whose alpha is below this (0 keeps the rendering unbiased)."""
    use_occupancy_grid: bool = True
    """Skip empty space with the occupancy grid (False: dense marching, for checks)."""
    background: BackgroundKind = "white"
    """Background composited behind the reference and the novel views."""
    chunk_rays: int = 16384
    """Rays rendered per chunk; bounds memory at high resolution."""

    def step_size(self, bound: float) -> float:
        """Marching step in world units for a field in [-bound, bound]^3."""
        return 2.0 * math.sqrt(3.0) * bound / self.samples_per_ray


@dataclass
class MultiViewGuidanceConfig:
    """Multi-view supervision: photometric and mask losses against known views."""

    rgb_weight: float = 1000.0
    mask_weight: float = 500.0
    batch_size: int = 1
    """Views supervised per step."""


@dataclass
class MeshPreviewConfig:
    """Live 3D previews: a small vertex-coloured GLB of the current shape, every few steps.

    Stage 1 extracts a surface of its density (:func:`mpod123.export.preview_mesh.density_surface`),
    stage 2 sends its current DMTet mesh; both are decimated to ``max_faces`` and coloured by the
    colour network at the vertices. The artist watches the shape form and can cancel a bad start.
    """

    enabled: bool = True
    """Emit ``preview_mesh`` events (and write ``previews/<stage>_<step>.glb``). A stage with
    ``preview_every = 0`` (every preview off) or no event callback sends none either."""
    every: int | None = None
    """Steps between two mesh previews; None: a tenth of the stage's steps. There is always
    one at the stage's end, and never two within ``every`` steps (the extraction is timed)."""
    max_faces: int = 5000
    """Face budget of a preview (quadric decimation): about 100 kB of GLB."""
    max_bytes: int = 300_000
    """Size cap of one preview's GLB; a larger one is decimated further until it fits."""
    grid_resolution: int = 48
    """Stage 1: cubes per side of the lattice the density surface is extracted on (6 tets each)."""
    density_threshold: float = 5.0
    """Stage 1: the density of the extracted surface. Half the Magic3D blob's density at the
    centre, so the very first preview is the blob's sphere; stable-dreamfusion exports at 10."""

    def interval(self, steps: int) -> int:
        """Steps between previews for a stage of ``steps`` steps (at least 1)."""
        return max(1, self.every if self.every is not None else steps // 10)


@dataclass
class OutlineStageConfig:
    """Stage 1: the NeRF outline stage."""

    steps: int = 5000
    """Adam steps (paper: 5000)."""
    lr: float = 1e-3
    """Adam learning rate for every parameter (paper: 1e-3)."""
    encoding_lr_scale: float = 10.0
    """Multiplier on the learning rate of the hash-grid tables. The paper says lr 1e-3 only;
    stable-dreamfusion, Magic123 and threestudio all train the encoding at 10x the MLPs' rate."""
    adam_betas: tuple[float, float] = (0.9, 0.99)
    adam_eps: float = 1e-15
    reference_view_prob: float = 0.25
    """Fraction of steps that render the reference view (paper: 25%); drawn on a
    fixed schedule so that exactly this share of steps uses it."""
    ref_rgb_weight: float = 1000.0
    """Weight of the reference-view photometric loss (Eq. 2), inside the input's mask."""
    ref_mask_weight: float = 500.0
    """Weight of the reference-view mask loss against the input's alpha."""
    entropy_weight: float = 1e-3
    """Binary entropy of every rendered pixel's opacity (pushes it to 0 or 1: no haze).
    Magic123's lambda_entropy 1e-3, ramped in linearly over ``entropy_ramp`` of the steps."""
    entropy_ramp: float = 0.5
    """Fraction of the steps over which the entropy weight rises from 0 (Magic123: half)."""
    orientation_weight: float = 1e-2
    """Ref-NeRF orientation loss, sum_i w_i max(0, n_i . d)^2 per ray (no visible back-facing
    normals; fights floaters and fog). Magic123's lambda_orient 1e-2."""
    normal_smoothness_weight: float = 0.5
    """3D normal smoothness sum_i w_i |n(x_i) - n(x_i + e)|_1 per ray, e ~ N(0, normal_smoothness_eps^2)
    (stable-dreamfusion's lambda_3d_normal_smooth). The references: stable-dreamfusion 10 (its
    3D form, a mean over every sample and axis, so a third of our per-ray L1 sum on the hit
    rays), threestudio's magic123-coarse 1000 on a 2D normal image at RGB 1000, Magic123 0.5 + 0.5
    on 2D normal images at RGB 5. Kept at 0.5: with ``normal_eps_cells`` the term now sees every
    active level (noise on the finest levels moves it about 20x more at the paper preset than
    with the fixed 0.01 step), a much stronger term at the same weight; see docs/benchmarks.md."""
    normal_smoothness_eps: float = 0.01
    """Standard deviation of the point perturbation of the normal smoothness (world units)."""
    regulariser_rays: int = 2048
    """Rays of each step's render drawn at random for the orientation and smoothness terms
    (they need the density's normals at every sample, so they run on a subset: an unbiased
    estimate of the per-ray mean)."""
    normal_method: Literal["finite_difference", "analytic"] = "finite_difference"
    """How the orientation and smoothness terms get their normals: finite differences of the
    density (first derivatives only; Magic123's renderer, step 0.01, and instant-nsr's way; threestudio's
    magic123-coarse config uses analytic normals) or the analytic
    gradient, whose loss needs a double backward through the hash grid (about 3x a draft step
    on the CPU). See mpod123.fields.normals."""
    normal_eps: float = 0.01
    """Finite-difference step in world units when ``normal_eps_cells`` is None (Magic123's and
    stable-dreamfusion's finite_difference_normal epsilon, threestudio's default)."""
    normal_eps_cells: float | None = 1.0
    """Finite-difference step in cells of the finest active hash-grid level (2 x bound / its
    resolution): Neuralangelo's progressive step, threestudio's ``finite_difference_normal_eps:
    progressive`` (one cell). A fixed 0.01 spans about 20 cells of the paper preset's finest
    level (4096), so the smoothness term missed 11 of 16 levels. None: the fixed ``normal_eps``."""
    progressive_band: bool = True
    """Coarse to fine: only the coarsest levels of the hash grid feed the MLPs at first, the others
    join one by one (threestudio's ProgressiveBandHashGrid in its magic123-coarse config;
    stable-dreamfusion's progressive_level). False: every level from step 0 (as before)."""
    band_start_levels: float = 0.5
    """Share of the levels active at step 0 (threestudio: start_level 8 of 16)."""
    band_grow_from: float = 0.2
    """Share of the steps after which further levels join (threestudio: start_step 2000 of 10000)."""
    band_full_at: float = 0.44
    """Share of the steps at which every level is active, the levels joining evenly in between
    (threestudio: a level every 300 steps from 2000, all 16 at 4400 of 10000)."""
    progressive_view: bool = False
    """Widen the novel views' polar and azimuth ranges from the reference view to the full
    ranges (stable-dreamfusion's progressive_view, on for its image-conditioned runs; Magic123
    has the flag but its scripts leave it off, hence off here). Not for guidances that propose
    their own views (multi-view supervision)."""
    view_range_start: float = 0.2
    """Share of the full ranges at step 0 (stable-dreamfusion's progressive_view_init_ratio)."""
    view_range_full_at: float = 0.4
    """Share of the steps at which the full ranges are reached (stable-dreamfusion: 0.2 + 2 x the
    step share, full at 40 %)."""
    regulariser_every: int = 1
    """The orientation and smoothness terms run on every Nth step only, weighted by N (the same
    weight per step on average). ``draft`` uses 4: on the CPU they cost about a render."""
    preview_every: int = 500
    """Emit a preview turntable every N steps (and at the end); 0 disables."""
    preview_views: int = 4
    preview_resolution: int = 128
    checkpoint_every: int = 1000
    """Write a checkpoint every N steps (and at the end) when a path is given; 0 disables."""
    mesh_preview: MeshPreviewConfig = field(default_factory=MeshPreviewConfig)
    """Live 3D previews of the density surface (``preview_mesh`` events)."""
    seed: int = 0
    camera: CameraConfig = field(default_factory=CameraConfig)
    views: ViewSamplingConfig = field(default_factory=ViewSamplingConfig)
    nerf: NeRFFieldConfig = field(default_factory=NeRFFieldConfig)
    occupancy: OccupancyGridConfig = field(default_factory=OccupancyGridConfig)
    render: RenderConfig = field(default_factory=RenderConfig)


@dataclass
class DMTetConfig:
    """The detail stage's geometry: a per-vertex SDF and a bounded deformation on a tet grid."""

    resolution: int = 128
    """Cubes per side of the tet grid (6 tets each); 128 has about 2.1M vertices, 192 or 256
    (Magic123's tet_grid_size) give finer surfaces at 3.4x / 8x the memory."""
    fit_to_density: bool = True
    """Rescale the grid to the bounding box of the stage-1 density, as Magic123 does, so all
    ``resolution`` cells span the object (about 70 of 128 do over the whole [-1, 1]^3)."""
    fit_threshold: float | None = None
    """Density above which a point counts as part of the object for the bounding box. None: the
    surface's own level, ``init_threshold`` or the calibrated one, as Magic123 and
    stable-dreamfusion do (their ``density_thresh`` sets both the box and the SDF). A lower level
    lets stage 1's faint haze stretch the box (0.5 left it nearly the whole cube, see
    docs/architecture.md)."""
    fit_margin: float = 0.1
    """Margin added on every side of the box, as a fraction of its largest side."""
    deform_scale: float = 0.25
    """Largest vertex offset, as a fraction of a grid cell (tanh-bounded)."""
    init_threshold: float | None = None
    """Density at which the initial surface is extracted from the NeRF; None calibrates it
    so that the first mesh's silhouettes best match the stage-1 masks."""
    backend: MarchingTetsBackend = "auto"
    """Marching tets: "torch" (reference) or "kaolin" (CUDA) or "auto"."""
    candidate_band: float = 0.05
    """A GPU's marching tets visits only tets within this SDF band of the surface (the same mesh)."""

@dataclass
class DetailStageConfig:
    """Stage 2: the textured DMTet detail stage."""

    steps: int = 5000
    """Adam steps (paper: 5000)."""
    lr: float = 1e-3
    """Learning rate of the texture field's MLPs (paper: 1e-3)."""
    texture_encoding_lr_scale: float = 10.0
    """Multiplier on ``lr`` for the texture field's hash grid, as in stage 1: Magic123's DMTet
    stage trains its encoder at 10x (nerf/network_grid.py ``get_params``). 1: the old setting."""
    fresh_texture_lr: float = 1e-2
    """Learning rate of a texture field trained from scratch on a given mesh (``mpod123 texture`` and
    ``bench texture``), where ``lr`` fine-tunes the field stage 1 handed over. 1e-2 is Instant-NGP's
    rate for a hash grid and Magic123's 10x for its grid; in ``bench texture`` (100 steps) it gave
    19.3 dB held-out PSNR against 15.9 dB at 1e-3 (docs/benchmarks.md, 'Texturing a given mesh')."""
    sdf_lr: float = 1e-3
    """Learning rate of the SDF values, which are in [-1, 1] at initialisation (paper: 1e-3 for
    everything; threestudio's refine stage uses 1e-2, the ``draft`` preset too)."""
    deform_lr: float = 1e-3
    """Learning rate of the deformation parameters (pre-tanh), as ``sdf_lr``."""
    adam_betas: tuple[float, float] = (0.9, 0.99)
    adam_eps: float = 1e-15
    resolution: int = 1024
    """Render size in pixels (paper: 1024 in stage 2)."""
    nvm_mask_resolution: int = 512
    """The stage-1 opacity for L_nvm is rendered at this size, upsampled bilinearly to the
    render size and thresholded at 0.5 (Eq. 5): no 4-pixel staircases at weight 500."""
    nvm_camera_pool: int = 96
    """N > 0: novel views from N orbit views drawn once, their stage-1 masks rendered once as the stage
    starts (no NeRF render in the loop). 0: fresh views, a mask render a step. Fixed-view guidances: by view."""
    extra_view_novel_share: float = 0.25
    """With extra views (``generate --view``): share of the novel-view draws placed at an extra
    view's camera instead, so its stage-1 mask drives L_nvm and MRCA there (ignored without them)."""
    reference_view_prob: float = 0.25
    ref_rgb_weight: float = 1000.0
    ref_mask_weight: float = 500.0
    nvm_weight: float = 500.0
    """Weight of L_nvm = ||M - rendered opacity||^2 against the stage-1 masks."""
    normal_consistency_weight: float = 1000.0
    """The paper is silent. threestudio's released magic123-refine-sd weighs its vertex form at
    1000 against RGB 1000 (ours too); Magic123 weighs the face form at 0.1 against RGB 5 (20 at
    ours). The face form at 1000 is about 10x the vertex form at 1000 on the same mesh."""
    normal_consistency_form: Literal["vertex", "face"] = "vertex"
    """"vertex": 1 - cos between the vertex normals at the two ends of each edge (threestudio's
    Mesh.normal_consistency); "face": 1 - cos between the faces on either side of each edge
    (Magic123's, and ours before)."""
    laplacian_weight: float = 20.0
    """Magic123's lambda_mesh_lap 0.1 against its RGB 5, i.e. 20 against ours (threestudio: 0)."""
    laplacian_form: Literal["norm", "squared"] = "norm"
    """"norm": the mean length of (D - A) v, the uniform graph Laplacian unnormalised and
    unsquared (Magic123's laplacian_smooth_loss, threestudio's Mesh.laplacian); "squared": the mean
    squared distance of a vertex from its neighbours' mean (ours before, at weight 1000)."""
    shading: Literal["lambertian", "albedo"] = "lambertian"
    """How novel views scored by a diffusion prior are shaded. Magic123 and stable-dreamfusion
    light them (a directional light near the camera), so SDS reaches the geometry through the
    normals and not only through silhouettes. Views supervised by known images (the reference
    view, multi-view supervision) stay unlit: those images carry their own light."""
    min_ambient: float = 0.1
    """Ambient share of a lit view is drawn uniformly in [min_ambient, 1] (stable-dreamfusion: 0.1)."""
    shading_normals: Literal["vertex", "face"] = "vertex"
    """Normals the lit views are shaded with: "vertex" interpolates area-weighted vertex normals
    across each face (Magic123's run_dmtet, threestudio); "face" shades every face flat (a
    faceted look the prior sees as detail: 1.2 degrees of mean normal error on a 5120-face sphere
    against 0.12 interpolated)."""
    textureless_prob: float = 0.2
    """Share of lit views rendered with a white albedo, geometry only (stable-dreamfusion: 0.2)."""
    light_jitter: float = 1.0
    """The light sits at the camera position plus N(0, light_jitter^2) per axis, seen from the origin."""
    rasterizer_backend: RasterizerBackend = "auto"
    """"torch" (reference) or "nvdiffrast" (CUDA) or "auto"."""
    preview_every: int = 500
    preview_views: int = 4
    preview_resolution: int = 256
    checkpoint_every: int = 1000
    mesh_preview: MeshPreviewConfig = field(default_factory=MeshPreviewConfig)
    """Live 3D previews of the current DMTet mesh (``preview_mesh`` events)."""
    seed: int = 0
    camera: CameraConfig = field(default_factory=CameraConfig)
    views: ViewSamplingConfig = field(default_factory=ViewSamplingConfig)
    dmtet: DMTetConfig = field(default_factory=DMTetConfig)
    background: BackgroundKind = "white"
    """Background of the reference views (the photo's own, white after preprocessing)."""
    novel_background: BackgroundKind = "random"
    """Background of the novel views: one random solid colour per view (Magic123), so no colour of
    the background pays off as a halo around the silhouette. "white": as before."""


@dataclass
class ExportConfig:
    """UV unwrap, texture bake and file formats."""

    texture_size: int = 2048
    """Baked texture width and height: 2048 for a final asset (``paper``), 1024 ``fast``, 256 ``draft``."""
    padding: int = 8
    """Texels of seam dilation around every UV island."""
    uv_backend: Literal["auto", "xatlas", "torch"] = "auto"
    """"xatlas" (in a subprocess), "torch" (one cell per triangle pair, always works) or
    "auto" (xatlas, falling back to torch with a warning if it is missing or crashes)."""
    uv_timeout_s: float = 600.0
    target_faces: int | None = 50_000
    """Quadric decimation to at most this many faces *before* the unwrap, which is what keeps
    xatlas fast; 50k is a game-ready prop (``paper``), 20k ``fast``, 5k ``draft``. None keeps
    the full mesh."""
    min_part_fraction: float = 0.05
    """Connected parts of the stage-2 surface smaller than this fraction of ``part_relative_to``
    are dropped before the export (and before ``bench reconstruct`` scores the shape): the
    floaters and inner bubbles an SDF grid leaves. threestudio's rule (``remove_outlier``) drops
    parts with under 1 % of the largest part's faces and is off for its DMTet; on the README
    benchmark 1 % kept a floater in 5 of 8 runs (Chamfer up to +0.003, docs/benchmarks.md), so
    5 %. Area rather than faces: a decimation does not change it. 0 keeps every part."""
    part_relative_to: Literal["largest", "total"] = "largest"
    """"largest": the fraction is of the largest part's area (threestudio's form), so the largest
    part always stays and an object of many similar pieces keeps them all; "total": of the whole
    surface's area (the old rule, which drops every piece of an object made of twenty equal ones)."""
    obj: bool = True
    """Also write OBJ + MTL + PNG beside the GLB."""


@dataclass
class PreprocessConfig:
    """Reading, matting and framing the input photo (see mpod123.pipeline.preprocess)."""

    size: int = 1024
    """Side of the square framed reference. Each consumer downsamples it (area) to its own size:
    Zero123 256, stage 1 128, textual inversion 512, stage 2 1024."""
    border_ratio: float = 0.2
    """Margin on each side, as a fraction of ``size`` (the object spans 1 - 2 x this)."""
    max_pixels: int = 40_000_000
    """Larger images are refused before decoding (a 5000x4000 photo is 20 MP)."""
    work_side: int = 768
    """Matting runs on a copy reduced to about this longer side; its alpha is upsampled back."""
    source_side: int = 2048
    """Photos are read at up to this longer side: the framed reference is cut from this
    resolution, so a 1024 reference keeps the photo's detail."""
    matting: Literal["auto", "alpha", "plain", "model"] = "auto"
    """auto: the alpha channel if it has one, else the segmentation model when installed, else
    plain-background matting when it is confident, else a refusal. The others force one way."""
    min_confidence: float = 0.5
    """Plain-background or model matting below this confidence (0..1) refuses instead of guessing
    (text to 3D skips such a candidate)."""
    background_tolerance: float = 0.08
    """Matting: a pixel this far (RGB distance, 0..1) from the border colour is foreground."""
    border_max_spread: float = 0.06
    """Matting applies only when the border is this uniform (mean deviation from its median)."""
    min_object_fraction: float = 0.005
    """The foreground must cover at least this fraction of the image."""
    view_framing: Literal["shared", "independent"] = "shared"
    """Extra views (``generate --view``): shared frames each at the main photo's scale (per the
    photo's longer side: the same camera at the same distance), centred on its own object;
    independent frames each like the main photo (its longer side at 1 - 2 x border_ratio),
    for photos taken from unknown distances. See mpod123.pipeline.extra_views."""




@dataclass
class PipelineConfig:
    """Everything one image-to-GLB run reads: the stages, the priors, the inputs and the export."""

    preset: str = "paper"
    """The named preset these values started from (recorded in run.json)."""
    seed: int = 0
    """Seeds every stage, draw and initialisation: same seed and device, same mesh."""
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    zero123: Zero123Config = field(default_factory=Zero123Config)
    outline: OutlineStageConfig = field(default_factory=OutlineStageConfig)
    inversion: TextualInversionConfig = field(default_factory=TextualInversionConfig)
    sd: StableDiffusionConfig = field(default_factory=StableDiffusionConfig)
    detail: DetailStageConfig = field(default_factory=DetailStageConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    embedding: str | None = None
    """A ready-made `<e>` embedding file; when set, textual inversion is skipped."""
    overrides: tuple[str, ...] = ()
    """The ``--set name=value`` overrides applied to the preset (recorded in run.json)."""
    deterministic: bool | None = None
    """Use torch's deterministic algorithms, so the same seed on the same device gives the same
    mesh (multi-threaded CPU scatter-adds otherwise differ in the last bits). None: on for the
    CPU, off on CUDA, where they turn every scatter-add (the hash-grid backward, compositing)
    into a slower sort-based kernel and need ``CUBLAS_WORKSPACE_CONFIG`` (set by the runner);
    the CUDA accelerators (tinycudann, nerfacc) have no deterministic mode anyway."""

    def with_seed(self, seed: int) -> PipelineConfig:
        """The same settings with every seed set to ``seed``."""
        self.seed = seed
        self.outline.seed = self.detail.seed = self.inversion.seed = seed
        self.zero123.seed = self.sd.seed = seed
        return self
