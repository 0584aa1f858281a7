"""Stage 1, the outline stage: fit a hash-grid NeRF to the reference view plus guidance.

Each step renders either the reference view (on ``reference_view_prob`` of the
steps, on a fixed schedule) with the paper's reconstruction loss (Eq. 2, masked
by the input's alpha) plus a mask loss on the alpha, or novel views scored by
the guidance. Every step also adds the density regularisers of
:mod:`.regularisers` (opacity entropy, orientation, 3D normal smoothness; the
paper names none, the defaults are Magic123's). The hash grid trains coarse to
fine: a band of its coarsest levels widens over the first part of the stage
(threestudio's magic123-coarse). Adam updates the field; the
occupancy grid is refreshed every few steps from the current density. The stage reports through ``mpod123.runtime.progress``
events only, checks its CancelToken once per step, and saves checkpoints from
which a run resumes exactly where it stopped.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..camera import Cameras, sample_orbit_cameras
from ..config import OutlineStageConfig, from_dict
from ..fields import NeRFField
from ..guidance import CameraProposer, Guidance, GuidanceInput
from ..runtime.progress import CancelToken, Preview, ProgressCallback
from ..rendering import OccupancyGrid, RenderOutput, VolumeRenderer
from .base import (
    CheckpointError,
    OptimisationStage,
    ReferenceView,
    is_reference_step,
    reference_losses,
)
from .regularisers import normal_regularisers, opacity_entropy

STAGE = "outline"


class OutlineStage(OptimisationStage):
    name = STAGE

    def __init__(
        self,
        cfg: OutlineStageConfig,
        reference: ReferenceView,
        guidance: Guidance,
        device: torch.device | str = "cpu",
        callback: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        super().__init__(device, callback, cancel)
        self.cfg = cfg
        self.guidance = guidance
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(cfg.seed)  # the initial weights follow the seed too
            self.field = NeRFField(cfg.nerf, device=self.device)
        self.grid = OccupancyGrid(cfg.occupancy, cfg.nerf.bound, device=self.device)
        self.renderer = VolumeRenderer(self.field, self.grid, cfg.render, backend=cfg.occupancy.backend)
        encoding = list(self.field.encoding.parameters())
        heads = [p for n, p in self.field.named_parameters() if not n.startswith("encoding.")]
        self.optimizer = self.adam(
            [{"params": encoding, "lr": cfg.lr * cfg.encoding_lr_scale}, {"params": heads, "lr": cfg.lr}],
            cfg.adam_betas, cfg.adam_eps,
        )
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.set_reference(reference, cfg.render.resolution)

    # ----------------------------------------------------------------- training
    def train_step(self) -> dict[str, Tensor]:
        """One optimisation step; returns the losses, detached and still on the device."""
        cfg = self.cfg
        self.field.train()
        self.field.encoding.active_levels = self.band_levels(self.step)
        self.grid.update(self.step, self.field.density, self.renderer.step_size, self.draws)
        if is_reference_step(self.step, cfg.reference_view_prob):
            bg = self.backgrounds(1, cfg.render.background)
            cams, target = self.reference_for_step()  # the main photo, or an extra view in turn
            out = self.renderer.render(cams, bg, stratified=True, generator=self.draws)
            losses = reference_losses(out.rgb, out.opacity, target, bg, cfg.ref_rgb_weight, cfg.ref_mask_weight)
        else:
            cams, ids = self.novel_cameras(self.guidance, cfg.render.resolution)
            bg = self.backgrounds(len(cams), cfg.render.background)
            out = self.renderer.render(cams, bg, stratified=True, generator=self.draws)
            losses = self.guidance(GuidanceInput(out.rgb, out.opacity, cams, bg, self.step, cfg.steps, ids))
        losses.update(self.regularisers(cams, out.opacity))
        reported = self.optimise(losses)  # skips a non-finite step; no host sync for the losses
        self.step += 1
        return reported

    def band_levels(self, step: int) -> int:
        """Hash-grid levels active at ``step`` (coarse to fine, threestudio's ProgressiveBandHashGrid
        on a schedule in shares of the stage): ``band_start_levels`` of them until ``band_grow_from``,
        then one more at even intervals, all from ``band_full_at`` on."""
        cfg, n = self.cfg, self.cfg.nerf.hash_grid.n_levels
        if not cfg.progressive_band:
            return n
        start = min(n, max(1, round(cfg.band_start_levels * n)))
        t = step / max(1, cfg.steps)
        if t < cfg.band_full_at and start < n:
            grown = (t - cfg.band_grow_from) / max(cfg.band_full_at - cfg.band_grow_from, 1e-9)
            return start + max(0, int((n - start) * grown))
        return n

    def view_ranges(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """Polar and azimuth ranges of this step's novel views: the full ones, or with
        ``progressive_view`` a share of them around the reference view (stable-dreamfusion)."""
        cfg, v = self.cfg, self.cfg.views
        if not cfg.progressive_view:
            return v.polar_range_deg, v.azimuth_range_deg
        r = min(1.0, cfg.view_range_start + (1.0 - cfg.view_range_start) * self.step
                / max(1.0, cfg.view_range_full_at * cfg.steps))
        p0, a0 = cfg.camera.reference_polar_deg, cfg.camera.reference_azimuth_deg
        polar = (p0 + r * (v.polar_range_deg[0] - p0), p0 + r * (v.polar_range_deg[1] - p0))
        azimuth = (a0 + r * (v.azimuth_range_deg[0] - a0), a0 + r * (v.azimuth_range_deg[1] - a0))
        return polar, azimuth

    def novel_cameras(self, guidance: object, resolution: int) -> tuple[Cameras, Tensor | None]:
        """As the base class, with the ranges of :meth:`view_ranges` for random orbit views."""
        if not self.cfg.progressive_view or isinstance(guidance, CameraProposer):
            return super().novel_cameras(guidance, resolution)
        v = self.cfg.views
        polar, azimuth = self.view_ranges()
        cams = sample_orbit_cameras(
            v.batch_size, polar, azimuth, v.radius_range, v.fov_range_deg, resolution, self.generator, self.device
        )
        return cams, None

    def entropy_weight(self) -> float:
        """Magic123's ramp: the entropy weight rises linearly over ``entropy_ramp`` of the steps."""
        cfg = self.cfg
        if cfg.entropy_ramp <= 0:
            return cfg.entropy_weight
        return cfg.entropy_weight * min(1.0, self.step / (cfg.entropy_ramp * max(1, cfg.steps)))

    def normal_step(self) -> float:
        """The finite-difference step of the regularisers' normals: ``normal_eps_cells`` cells of
        the finest active level (Neuralangelo's progressive step), or the fixed ``normal_eps``."""
        if self.cfg.normal_eps_cells is None:
            return self.cfg.normal_eps
        return self.cfg.normal_eps_cells * self.field.encoding.finest_active_cell(self.field.bound)

    def regularisers(self, cameras: Cameras, opacity: Tensor) -> dict[str, Tensor]:
        """The weighted density regularisers for this step's render (see :mod:`.regularisers`)."""
        cfg = self.cfg
        out: dict[str, Tensor] = {}
        if cfg.entropy_weight and opacity.requires_grad:
            out["entropy"] = self.entropy_weight() * opacity_entropy(opacity)
        every = max(1, cfg.regulariser_every)
        if (cfg.orientation_weight or cfg.normal_smoothness_weight) and cfg.regulariser_rays > 0 and self.step % every == 0:
            terms = normal_regularisers(
                self.renderer, cameras, cfg.regulariser_rays, self.draws, cfg.normal_smoothness_eps,
                with_orientation=bool(cfg.orientation_weight), with_smoothness=bool(cfg.normal_smoothness_weight),
                normal_method=cfg.normal_method, normal_eps=self.normal_step(),
            )
            if "orientation" in terms:  # x every: the same weight per step on average
                out["orientation"] = every * cfg.orientation_weight * terms["orientation"]
            if "normal_smoothness" in terms:
                out["normal_smoothness"] = every * cfg.normal_smoothness_weight * terms["normal_smoothness"]
        return out

    def compactors(self):
        return [self.renderer.marcher.compactor]

    # ------------------------------------------------------------ inspection
    @torch.no_grad()
    def preview(self) -> Preview:
        """A turntable strip: colour on the top row, shaded normals below."""
        self.field.eval()
        cams = self.preview_cameras()
        white = torch.ones(len(cams), 3, device=self.device)
        out = self.renderer.marcher.compactor.exact(lambda: self.renderer.render(cams, white, with_normals=True))
        return self.strip_preview(out.rgb, out.opacity, out.normals)  # volume normals are opacity-weighted

    @torch.no_grad()
    def preview_surface(self):
        """The density surface on a coarse lattice, through the occupancy grid (a live 3D preview)."""
        from ..export.preview_mesh import density_surface

        self.field.eval()
        mp = self.cfg.mesh_preview
        mesh = density_surface(self.field.density, self.field.bound, mp.grid_resolution, mp.density_threshold,
                               self.grid.query, self.device)
        return mesh, self.field.color

    @torch.no_grad()
    def render(self, cameras: Cameras, background: Tensor | None = None) -> RenderOutput:
        """Evaluation render (no jitter), white background by default."""
        self.field.eval()
        cameras = cameras.to(self.device)
        if background is None:
            background = torch.ones(len(cameras), 3, device=self.device)
        return self.renderer.marcher.compactor.exact(lambda: self.renderer.render(cameras, background))

    def masks(self, cameras: Cameras) -> Tensor:
        """Stage-1 masks (B, H, W), opacity >= 0.5 (Eq. 5): the hand-off to stage 2."""
        return self.render(cameras).mask

    def opacity(self, cameras: Cameras) -> Tensor:
        """Stage-1 opacity (B, H, W) in [0, 1]: what stage 2 upsamples before thresholding (Eq. 5)."""
        return self.render(cameras).opacity[..., 0]

    # ------------------------------------------------------------ checkpoints
    def modules(self) -> dict[str, nn.Module]:
        return {"field": self.field, "grid": self.grid}

    def check_compatible(self, saved_cfg: dict) -> None:
        saved = from_dict(OutlineStageConfig, saved_cfg)
        if saved.nerf != self.cfg.nerf or saved.occupancy.resolution != self.cfg.occupancy.resolution:
            raise CheckpointError(
                "the checkpoint's field or grid settings differ from this run's; "
                "resume with the same preset and options, or start a new work folder"
            )
