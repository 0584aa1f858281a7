"""Stage 1, the outline stage: fit a hash-grid NeRF to the reference view plus guidance.

Each step renders either the reference view (on ``reference_view_prob`` of the
steps, on a fixed schedule) with the paper's reconstruction loss (Eq. 2, masked
by the input's alpha) plus a mask loss on the alpha, or novel views scored by
the guidance. Adam updates the field; the occupancy grid is refreshed every few
steps from the current density. The stage reports through ``mpod123.progress``
events only, checks its CancelToken once per step, and saves checkpoints from
which a run resumes exactly where it stopped.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..camera import Cameras, orbit_cameras, sample_orbit_cameras
from ..config import OutlineStageConfig, from_dict, to_dict
from ..fields import NeRFField
from ..guidance import CameraProposer, Guidance, GuidanceInput, over, resize_rgba
from ..images import grid_image, png_bytes
from ..progress import CancelToken, Preview, Progress, ProgressCallback, StageDone, emit
from ..rendering import OccupancyGrid, RenderOutput, VolumeRenderer, background_color

STAGE = "outline"
CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed; the message says why."""


@dataclass
class ReferenceView:
    """The input image (H, W, 4) in [0, 1], straight alpha, and the camera it was taken from."""

    rgba: Tensor
    camera: Cameras

    @staticmethod
    def on_orbit(rgba: Tensor, cfg: OutlineStageConfig) -> ReferenceView:
        """The paper's setting: the input seen from the configured reference orbit pose."""
        cam = cfg.camera
        h, w = rgba.shape[:2]
        return ReferenceView(
            rgba, orbit_cameras(cam.reference_polar_deg, cam.reference_azimuth_deg, cam.radius, cam.fov_deg, w, h)
        )


def is_reference_step(step: int, prob: float) -> bool:
    """Exactly ``prob`` of the steps over any long run, evenly spread (step is 0-based)."""
    return math.floor((step + 1) * prob) > math.floor(step * prob)


def _scaled_size(camera: Cameras, height: int) -> tuple[int, int]:
    return max(1, round(height * camera.width / camera.height)), height


class OutlineStage:
    def __init__(
        self,
        cfg: OutlineStageConfig,
        reference: ReferenceView,
        guidance: Guidance,
        device: torch.device | str = "cpu",
        callback: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.guidance = guidance
        self.callback = callback
        self.cancel = cancel or CancelToken()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(cfg.seed)  # the initial weights follow the seed too
            self.field = NeRFField(cfg.nerf, device=self.device)
        self.grid = OccupancyGrid(cfg.occupancy, cfg.nerf.bound, device=self.device)
        self.renderer = VolumeRenderer(self.field, self.grid, cfg.render, backend=cfg.occupancy.backend)
        encoding = list(self.field.encoding.parameters())
        heads = [p for n, p in self.field.named_parameters() if not n.startswith("encoding.")]
        self.optimizer = torch.optim.Adam(
            [{"params": encoding, "lr": cfg.lr * cfg.encoding_lr_scale}, {"params": heads, "lr": cfg.lr}],
            betas=cfg.adam_betas,
            eps=cfg.adam_eps,
        )
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.elapsed_s = 0.0
        w, h = _scaled_size(reference.camera, cfg.render.resolution)
        self.reference_camera = reference.camera.resized(w, h).to(self.device)
        self.reference_target = resize_rgba(reference.rgba[None].float(), h, w).to(self.device)

    # ----------------------------------------------------------------- training
    def _backgrounds(self, n: int) -> Tensor:
        return background_color(self.cfg.render.background, n, self.generator, self.device)

    def _novel_cameras(self) -> tuple[Cameras, Tensor | None]:
        res = self.cfg.render.resolution
        if isinstance(self.guidance, CameraProposer):
            cams, ids = self.guidance.propose_cameras(self.step, res, self.generator)
            return cams.to(self.device), ids
        v = self.cfg.views
        cams = sample_orbit_cameras(
            v.batch_size, v.polar_range_deg, v.azimuth_range_deg, v.radius_range, v.fov_range_deg, res, self.generator, self.device
        )
        return cams, None

    def reference_losses(self, out: RenderOutput, background: Tensor) -> dict[str, Tensor]:
        """Eq. 2 inside the input's alpha, plus the mask loss against the alpha."""
        target = self.reference_target
        alpha = target[..., 3:]
        rgb = F.mse_loss(out.rgb * alpha, over(target, background) * alpha)
        mask = F.mse_loss(out.opacity, alpha)
        return {"ref_rgb": self.cfg.ref_rgb_weight * rgb, "ref_mask": self.cfg.ref_mask_weight * mask}

    def train_step(self) -> dict[str, float]:
        """One optimisation step; returns the losses as floats."""
        cfg = self.cfg
        self.field.train()
        self.grid.update(self.step, self.field.density, self.renderer.step_size, self.generator)
        if is_reference_step(self.step, cfg.reference_view_prob):
            bg = self._backgrounds(1)
            out = self.renderer.render(self.reference_camera, bg, stratified=True, generator=self.generator)
            losses = self.reference_losses(out, bg)
        else:
            cams, ids = self._novel_cameras()
            bg = self._backgrounds(len(cams))
            out = self.renderer.render(cams, bg, stratified=True, generator=self.generator)
            losses = self.guidance(GuidanceInput(out.rgb, out.opacity, cams, bg, self.step, cfg.steps, ids))
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        if total.requires_grad:  # an empty render (nothing occupied) has no graph
            total.backward()
            self.optimizer.step()
        self.step += 1
        return {k: float(v.detach()) for k, v in losses.items()}

    def run(self, checkpoint_path: str | Path | None = None, steps: int | None = None) -> StageDone:
        """Train up to ``steps`` (default: the config's), from wherever the stage is.

        Emits Progress every step, a Preview every ``preview_every`` steps and at
        the end, and StageDone. On cancel, writes a checkpoint (when a path is
        given) and raises :class:`mpod123.progress.Cancelled`.
        """
        total = steps if steps is not None else self.cfg.steps
        start_step = self.step
        t0 = time.perf_counter()
        elapsed0 = self.elapsed_s
        try:
            while self.step < total:
                self.cancel.raise_if_cancelled()
                losses = self.train_step()
                self.elapsed_s = elapsed0 + time.perf_counter() - t0
                per_step = (time.perf_counter() - t0) / (self.step - start_step)
                emit(self.callback, Progress(STAGE, self.step, total, losses, self.elapsed_s, per_step * (total - self.step)))
                if checkpoint_path and self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                    self.save_checkpoint(checkpoint_path)
                if self.cfg.preview_every and self.step % self.cfg.preview_every == 0 and self.step < total:
                    emit(self.callback, self.preview())
        except BaseException:
            if checkpoint_path and self.step > start_step:
                self.save_checkpoint(checkpoint_path)
            raise
        if checkpoint_path:
            self.save_checkpoint(checkpoint_path)
        if self.cfg.preview_every:
            emit(self.callback, self.preview())
        done = StageDone(STAGE, self.step, self.elapsed_s, str(checkpoint_path) if checkpoint_path else None)
        emit(self.callback, done)
        return done

    # ------------------------------------------------------------ inspection
    def turntable_cameras(self, n: int, resolution: int) -> Cameras:
        """``n`` views around the reference elevation, starting at the reference azimuth."""
        ref = self.reference_camera
        polar = float(torch.rad2deg(ref.polar[0]))
        az0 = float(torch.rad2deg(ref.azimuth[0]))
        az = [az0 + 360.0 * k / n for k in range(n)]
        fov = float(torch.rad2deg(ref.fov_y[0]))
        return orbit_cameras(polar, az, float(ref.radius[0]), fov, resolution, device=self.device)

    @torch.no_grad()
    def preview(self) -> Preview:
        """A turntable strip: colour on the top row, shaded normals below."""
        self.field.eval()
        cams = self.turntable_cameras(self.cfg.preview_views, self.cfg.preview_resolution)
        out = self.renderer.render(cams, torch.ones(len(cams), 3, device=self.device), with_normals=True)
        rgb = out.rgb.cpu().numpy()
        a = out.opacity.cpu().numpy()
        normals = (out.normals.cpu().numpy() * 0.5 + 0.5 * a) + (1.0 - a)
        img = grid_image([list(rgb), list(normals)])
        return Preview(STAGE, self.step, png_bytes(img), img.shape[1], img.shape[0], len(cams))

    @torch.no_grad()
    def render(self, cameras: Cameras, background: Tensor | None = None) -> RenderOutput:
        """Evaluation render (no jitter), white background by default."""
        self.field.eval()
        cameras = cameras.to(self.device)
        if background is None:
            background = torch.ones(len(cameras), 3, device=self.device)
        return self.renderer.render(cameras, background)

    def masks(self, cameras: Cameras) -> Tensor:
        """Stage-1 masks (B, H, W), opacity >= 0.5 (Eq. 5): the hand-off to stage 2."""
        return self.render(cameras).mask

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "stage": STAGE,
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "config": to_dict(self.cfg),
            "field": self.field.state_dict(),
            "grid": self.grid.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("stage") != STAGE or state.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(
                f"not an outline-stage checkpoint of version {CHECKPOINT_VERSION} "
                f"(found stage={state.get('stage')!r}, version={state.get('version')!r})"
            )
        saved = from_dict(OutlineStageConfig, state["config"])
        if saved.nerf != self.cfg.nerf or saved.occupancy.resolution != self.cfg.occupancy.resolution:
            raise CheckpointError(
                "the checkpoint's field or grid settings differ from this run's; "
                "resume with the same preset and options, or start a new work folder"
            )
        self.field.load_state_dict(state["field"])
        self.grid.load_state_dict(state["grid"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].cpu())
        self.step = int(state["step"])
        self.elapsed_s = float(state["elapsed_s"])

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write atomically (temporary file, then rename) so a crash never leaves half a checkpoint."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        try:
            state = torch.load(Path(path), map_location=self.device, weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"no checkpoint at {path}") from None
        except Exception as exc:
            raise CheckpointError(f"cannot read checkpoint {path}: {exc}; delete it to start over") from None
        self.load_state_dict(state)

