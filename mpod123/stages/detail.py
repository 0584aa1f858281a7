"""Stage 2, the detail stage: a textured DMTet mesh initialised from the stage-1 NeRF.

Geometry: a DMTet whose SDF starts at (threshold - density) / threshold of the
NeRF, with the threshold calibrated so the first mesh's silhouettes match the
stage-1 masks best. Texture: a copy of the NeRF's encoding and colour network.
Each step renders either the reference view (reference RGB and mask losses) or
novel views, which get the guidance's losses plus the paper's
L_nvm = ||M - O||^2 against the stage-1 masks M of the same cameras, on a random
solid-colour background (Magic123). Normal consistency (threestudio's vertex form)
and a Laplacian (Magic123's unsquared form) keep the surface smooth; the texture
field's hash grid trains at 10x the lr of its MLPs (Magic123).

Novel views scored by a diffusion prior are shaded (:mod:`.shading`) with
interpolated vertex normals, as in Magic123; views compared with known images (the reference view, a guidance that
proposes its own known cameras) stay unlit. The tet grid spans the bounding box
of the stage-1 density rather than the whole field cube (Magic123), so all its
cells land on the object.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..camera import Cameras, sample_orbit_cameras
from ..config import DetailStageConfig, from_dict
from ..fields import NeRFField
from ..geometry import DMTet, Mesh, laplacian_loss, normal_consistency_loss, tet_grid
from ..geometry.dmtet import density_box
from ..guidance import CameraProposer, Guidance, GuidanceInput
from ..imaging.metrics import silhouette_iou
from ..runtime.progress import CancelToken, Preview, ProgressCallback
from ..rendering import MeshRenderer, MeshRenderOutput
from .base import (
    CheckpointError,
    OptimisationStage,
    ReferenceView,
    is_reference_step,
    reference_losses,
    scaled_size,
    turntable_cameras,
)
from .shading import Lighting, shade

STAGE = "detail"
MaskFn = Callable[[Cameras], Tensor]
THRESHOLD_CANDIDATES = (0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0, 35.0, 60.0, 100.0)


class DetailStage(OptimisationStage):
    name = STAGE
    pool_masks: Tensor | None = None

    def __init__(
        self,
        cfg: DetailStageConfig,
        reference: ReferenceView,
        guidance: Guidance,
        nerf: NeRFField,
        stage1_masks: MaskFn,
        device: torch.device | str = "cpu",
        callback: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        """``stage1_masks(cameras)`` returns the outline stage's (B, H, W) masks for any cameras."""
        super().__init__(device, callback, cancel)
        self.cfg = cfg
        self.guidance = guidance
        self.stage1_masks = stage1_masks
        grid = tet_grid(cfg.dmtet.resolution, nerf.bound).to(self.device)
        self.dmtet = DMTet(grid, cfg.dmtet.deform_scale, backend=cfg.dmtet.backend, band=cfg.dmtet.candidate_band)
        self.texture = copy.deepcopy(nerf).to(self.device).requires_grad_(True)
        self.renderer = MeshRenderer(cfg.rasterizer_backend, self.device)
        self.set_reference(reference, cfg.resolution)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.nvm_cache: dict[tuple, Tensor] = {}
        """Stage-1 masks (h, w) bool by view key; stage 1 is frozen, so a view's mask never changes."""
        self.camera_pool: Cameras | None = None
        self.pool_masks: Tensor | None = None
        """The pool views' stage-1 opacity (N, h, w) at ``nvm_mask_resolution``, rendered once."""
        density = self.dmtet.grid_density(nerf.density)
        self.init_threshold = cfg.dmtet.init_threshold or self.calibrate_threshold(density)
        if cfg.dmtet.fit_to_density:  # Magic123: the box of the surface's own density level
            level = self.init_threshold if cfg.dmtet.fit_threshold is None else cfg.dmtet.fit_threshold
            box = density_box(nerf.density, nerf.bound, level, cfg.dmtet.fit_margin, device=self.device)
            self.dmtet = DMTet(grid, cfg.dmtet.deform_scale, backend=cfg.dmtet.backend, box=box,
                               band=cfg.dmtet.candidate_band)
            density = self.dmtet.grid_density(nerf.density)
        self.dmtet.init_from_density(density, self.init_threshold)
        if cfg.nvm_camera_pool and not isinstance(guidance, CameraProposer):
            self.build_camera_pool(cfg.resolution)  # every stage-1 render of the loop, done here once
        encoding = list(self.texture.encoding.parameters())  # Magic123: the hash grid at 10x
        heads = [p for n, p in self.texture.named_parameters() if not n.startswith("encoding.")]
        self.optimizer = self.adam(
            [
                {"params": [self.dmtet.sdf], "lr": cfg.sdf_lr},
                {"params": [self.dmtet.deform], "lr": cfg.deform_lr},
                {"params": encoding, "lr": cfg.lr * cfg.texture_encoding_lr_scale},
                {"params": heads, "lr": cfg.lr},
            ],
            cfg.adam_betas, cfg.adam_eps,
        )

    # ----------------------------------------------------------- initialisation
    @torch.no_grad()
    def calibrate_threshold(self, density: Tensor, views: int = 4, resolution: int = 64) -> float:
        """The density threshold whose mesh best reproduces the stage-1 masks (mean IoU over a turntable)."""
        cams = turntable_cameras(self.reference_camera, views, resolution)
        target = self.stage1_masks(cams).to(self.device).float() >= 0.5  # a mask, or the opacity (Eq. 5)
        best, best_iou = THRESHOLD_CANDIDATES[0], -1.0
        for threshold in THRESHOLD_CANDIDATES:
            self.dmtet.init_from_density(density, threshold)
            mesh = self.dmtet.mesh()
            if mesh.n_faces == 0:
                continue
            masks = self.renderer.compactor.exact(lambda: self.renderer.render(mesh, cams)).mask  # noqa: B023
            iou = silhouette_iou(masks, target)
            if iou > best_iou:
                best, best_iou = threshold, iou
        self.init_iou = best_iou
        return best

    # ----------------------------------------------------------------- training
    def mesh(self) -> Mesh:
        return self.dmtet.mesh()

    def render_mesh(self, mesh: Mesh, cameras: Cameras, background: Tensor | None, with_normals: bool = False) -> MeshRenderOutput:
        return self.renderer.render(mesh, cameras, self.texture.color, background, with_normals,
                                    self.cfg.shading_normals)

    def nvm_targets(self, cameras: Cameras, height: int, width: int, keys: list[tuple] | None = None) -> Tensor:
        """Stage-1 masks (B, H, W, 1) of these cameras: the stage-1 opacity rendered at
        ``nvm_mask_resolution``, upsampled bilinearly and thresholded at 0.5 (Eq. 5), so the
        targets have no 4-pixel staircases at weight 500. ``stage1_masks`` may return the
        stage-1 opacity (then this is Eq. 5 at the render size) or its thresholded mask.

        With ``keys`` (one per camera, naming a fixed view: a guidance's view id or a
        camera-pool slot), each view's small render is made once and then read from
        :attr:`nvm_cache`: rendering the stage-1 NeRF every step is a large part of
        a step's cost on the CPU, and a chain of host syncs on CUDA.
        """
        small = self.cfg.nvm_mask_resolution
        sw, sh = scaled_size(cameras, small)
        if isinstance(keys, Tensor):  # camera-pool slots: the pool's masks, rendered once at the start
            masks = self.pool_masks[keys]
        elif keys is None:
            with torch.no_grad():
                masks = self.stage1_masks(cameras.resized(sw, sh)).to(self.device).float()
        else:
            keys = [(key, sw, sh) for key in keys]
            for key in keys:
                if key[0][0] == "pool" and key not in self.nvm_cache and self.pool_masks is not None:
                    self.nvm_cache[key] = self.pool_masks[key[0][1]]
            missing = sorted({i for i, key in enumerate(keys) if key not in self.nvm_cache})
            if missing:
                with torch.no_grad():
                    fresh = self.stage1_masks(cameras[torch.tensor(missing)].resized(sw, sh)).to(self.device).float()
                for i, mask in zip(missing, fresh):
                    self.nvm_cache.setdefault(keys[i], mask)
            masks = torch.stack([self.nvm_cache[key] for key in keys])
        masks = masks[:, None]
        if masks.shape[-2:] != (height, width):
            masks = F.interpolate(masks, size=(height, width), mode="bilinear", align_corners=False)
        return (masks >= 0.5).float()[:, 0, ..., None]

    def shades_novel_views(self) -> bool:
        """Novel views are lit for a diffusion prior; a guidance with its own known views
        (a CameraProposer: multi-view supervision) compares them with photos, so they stay unlit."""
        return self.cfg.shading == "lambertian" and not isinstance(self.guidance, CameraProposer)

    def render_novel(self, mesh: Mesh, cameras: Cameras, background: Tensor) -> MeshRenderOutput:
        """A novel-view render: lit (see :mod:`.shading`) when :meth:`shades_novel_views`, else albedo."""
        if not self.shades_novel_views():
            return self.render_mesh(mesh, cameras, background)
        cfg = self.cfg
        light = Lighting.draw(cameras, self.draws, cfg.min_ambient, cfg.textureless_prob, cfg.light_jitter)
        out = self.render_mesh(mesh, cameras, torch.zeros_like(background), with_normals=True)
        rgb = shade(out.rgb, out.opacity, out.normals, background, light)
        return MeshRenderOutput(rgb, out.opacity, out.depth, out.normals, out.tri_id)

    def build_camera_pool(self, resolution: int) -> None:
        """Draw the ``nvm_camera_pool`` orbit views once (the same for a seed) and render their stage-1
        opacity once, at ``nvm_mask_resolution``, in batches: the stage-2 loop then renders no NeRF."""
        v, n = self.cfg.views, self.cfg.nvm_camera_pool
        gen = torch.Generator().manual_seed(self.cfg.seed + 7919)  # the pool is the same for a seed
        self.camera_pool = sample_orbit_cameras(
            n, v.polar_range_deg, v.azimuth_range_deg, v.radius_range, v.fov_range_deg, resolution, gen, self.device
        )
        sw, sh = scaled_size(self.camera_pool, self.cfg.nvm_mask_resolution)
        with torch.no_grad():
            self.pool_masks = torch.cat([
                self.stage1_masks(self.camera_pool[i : i + 8].resized(sw, sh)).to(self.device).float()
                for i in range(0, n, 8)
            ])

    def draw_novel_views(self, resolution: int) -> tuple[Cameras, Tensor | None, list[tuple] | Tensor | None]:
        """Novel cameras, their guidance view ids, and the keys of their stage-1 masks.

        A guidance that proposes its own (fixed) views keys the masks by view id. Otherwise,
        with ``nvm_camera_pool`` = N > 0 (the default) the cameras come from N orbit views drawn
        and rendered once (:meth:`build_camera_pool`), keyed by their pool slots (a device tensor,
        so nothing is read back); with 0 every step draws fresh cameras and renders their masks.
        """
        if isinstance(self.guidance, CameraProposer):
            cams, ids = self.novel_cameras(self.guidance, resolution)
            return cams, ids, [("view", int(i)) for i in ids.tolist()]
        pool = self.cfg.nvm_camera_pool
        if not pool:
            cams, ids = self.novel_cameras(self.guidance, resolution)
            return cams, ids, None
        if self.camera_pool is None or self.camera_pool.height != resolution:
            self.build_camera_pool(resolution)
        gen = self.draws
        slots = torch.randint(pool, (self.cfg.views.batch_size,), generator=gen, device=gen.device).to(self.device)
        cams = self.camera_pool[slots]
        if self.extra_references:  # an extra view may replace a camera: keys as a list (read on the host)
            return cams, None, [("pool", int(i)) for i in slots.tolist()]
        return cams, None, slots

    def place_extra_view_cameras(self, cameras: Cameras, keys: list[tuple] | None) -> tuple[Cameras, list[tuple] | None]:
        """On ``extra_view_novel_share`` of the novel steps, the first camera of the batch is an extra
        view's camera (at the novel-view size), keyed so its stage-1 mask is rendered once: the L_nvm
        target and the MRCA mask of that camera. Draws from the stage's generator only when there are
        extra views, so single-photo runs keep their random sequence."""
        share = self.cfg.extra_view_novel_share
        if share <= 0 or not self.extra_references:
            return cameras, keys
        if float(torch.rand((), generator=self.generator)) >= share:
            return cameras, keys
        j = int(torch.randint(len(self.extra_references), (), generator=self.generator))
        cam = self.extra_references[j][0].resized(cameras.width, cameras.height).to(cameras.device)
        joined = Cameras.cat([cam, cameras[1:]]) if len(cameras) > 1 else cam
        if keys is not None:
            keys = [("extra_view", j), *keys[1:]]
        elif len(joined) == 1:  # fresh draws are not cached, but a lone extra-view camera is a fixed view
            keys = [("extra_view", j)]
        return joined, keys

    def train_step(self) -> dict[str, Tensor]:
        cfg = self.cfg
        self.texture.train()
        mesh = self.mesh()
        losses: dict[str, Tensor] = {}
        if mesh.n_faces == 0:
            raise RuntimeError(
                "the detail stage's mesh vanished (the SDF has no zero crossing); "
                "lower the SDF learning rate or set dmtet.init_threshold"
            )
        if is_reference_step(self.step, cfg.reference_view_prob):
            bg = self.backgrounds(1, cfg.background)
            cams, target = self.reference_for_step()  # the main photo, or an extra view in turn
            out = self.render_mesh(mesh, cams, bg)
            losses.update(reference_losses(out.rgb, out.opacity, target, bg, cfg.ref_rgb_weight, cfg.ref_mask_weight))
        else:
            cams, ids, mask_keys = self.draw_novel_views(cfg.resolution)
            if self.extra_references and ids is None:  # extra views' cameras join the novel views
                cams, mask_keys = self.place_extra_view_cameras(cams, mask_keys)
            bg = self.backgrounds(len(cams), cfg.novel_background)  # Magic123: a random solid colour
            out = self.render_novel(mesh, cams, bg)
            target = self.nvm_targets(cams, out.opacity.shape[1], out.opacity.shape[2], mask_keys)
            losses.update(self.guidance(GuidanceInput(out.rgb, out.opacity, cams, bg, self.step, cfg.steps, ids, target)))
            losses["nvm"] = cfg.nvm_weight * F.mse_loss(out.opacity, target)
        if cfg.normal_consistency_weight:
            losses["normal_consistency"] = cfg.normal_consistency_weight * normal_consistency_loss(
                mesh, cfg.normal_consistency_form)
        if cfg.laplacian_weight:
            losses["laplacian"] = cfg.laplacian_weight * laplacian_loss(mesh, cfg.laplacian_form)
        reported = self.optimise(losses)  # skips a non-finite step; no host sync for the losses
        self.step += 1
        return reported

    def compactors(self):
        return [self.renderer.compactor]

    # ------------------------------------------------------------ inspection
    @torch.no_grad()
    def render(self, cameras: Cameras, background: Tensor | None = None, with_normals: bool = False) -> MeshRenderOutput:
        """Evaluation render of the current mesh, white background by default."""
        self.texture.eval()
        cameras = cameras.to(self.device)
        if background is None:
            background = torch.ones(len(cameras), 3, device=self.device)
        mesh = self.mesh()
        return self.renderer.compactor.exact(lambda: self.render_mesh(mesh, cameras, background, with_normals))

    @torch.no_grad()
    def preview_surface(self):
        """The current DMTet mesh and the texture field's colour (a live 3D preview)."""
        self.texture.eval()
        return self.mesh(), self.texture.color

    @torch.no_grad()
    def preview(self) -> Preview:
        """A turntable strip: textured mesh on the top row, shaded normals below."""
        out = self.render(self.preview_cameras(), with_normals=True)
        return self.strip_preview(out.rgb, out.opacity, out.normals * out.opacity)

    # ------------------------------------------------------------ checkpoints
    def modules(self) -> dict[str, nn.Module]:
        return {"dmtet": self.dmtet, "texture": self.texture}

    def check_compatible(self, saved_cfg: dict) -> None:
        saved = from_dict(DetailStageConfig, saved_cfg)
        if saved.dmtet.resolution != self.cfg.dmtet.resolution:
            raise CheckpointError(
                f"the checkpoint's tet grid is {saved.dmtet.resolution}^3, this run's is "
                f"{self.cfg.dmtet.resolution}^3; resume with the same preset, or start a new work folder"
            )
