"""What both optimisation stages share: the loop, events, cancel, checkpoints, the reference view.

A stage subclasses :class:`OptimisationStage` and provides ``train_step``,
``preview`` and the modules its checkpoint holds. The loop emits Progress
(at most ``progress_rate_hz`` a second, always the stage's last step), a
Preview every ``preview_every`` steps and at the end, and StageDone; it checks
the CancelToken before each step, and on cancel or any error it writes a
checkpoint (when a path is given) before re-raising, so a killed or cancelled
run resumes where it stopped.

A step whose loss or gradients are not finite (an fp16 overflow in a prior, a
degenerate render) is skipped rather than applied: one NaN in Adam's moments
would stay there for the rest of the run. Skips are counted (``skipped_steps``,
kept in checkpoints and reported in run.json). On a GPU the check never leaves
the device: Adam runs fused and takes a device-side ``found_inf`` (as torch.amp's
GradScaler hands it), which leaves the parameters and Adam's state untouched on a
bad step, and the skip count is a device tensor read only when it is reported.
Losses too stay on the device until an event reports them.
"""

from __future__ import annotations

import logging
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..camera import Cameras, orbit_cameras, sample_orbit_cameras
from ..config import from_dict, to_dict
from ..guidance import CameraProposer, over, resize_rgba
from ..imaging.images import grid_image, png_bytes
from ..rendering import background_color
from ..runtime.devices import deterministic_algorithms, deterministic_mode
from ..runtime.errors import Mpod123Error
from ..runtime.progress import CancelToken, Preview, Progress, ProgressCallback, StageDone, emit
from ..runtime.syncs import Compactor, refresh_all, takes_gpu_paths
from .mesh_previews import MeshPreviewer

CHECKPOINT_VERSION = 1
PROGRESS_RATE_HZ = 4.0
"""Progress events per second at most: each one is a stored, fsynced row on the backend."""

log = logging.getLogger(__name__)


class CheckpointError(Mpod123Error, RuntimeError):
    """A checkpoint that cannot be resumed; the message says why."""


@dataclass
class ReferenceView:
    """The input image (H, W, 4) in [0, 1], straight alpha, and the camera it was taken from."""

    rgba: Tensor
    camera: Cameras

    @staticmethod
    def on_orbit(rgba: Tensor, camera_cfg: Any) -> ReferenceView:
        """The paper's setting: the input seen from the configured reference orbit pose."""
        cam = getattr(camera_cfg, "camera", camera_cfg)
        h, w = rgba.shape[:2]
        return ReferenceView(
            rgba, orbit_cameras(cam.reference_polar_deg, cam.reference_azimuth_deg, cam.radius, cam.fov_deg, w, h)
        )


def is_reference_step(step: int, prob: float) -> bool:
    """Exactly ``prob`` of the steps over any long run, evenly spread (step is 0-based)."""
    return math.floor((step + 1) * prob) > math.floor(step * prob)


def reference_view_index(step: int, prob: float, n_views: int) -> int:
    """Which of ``n_views`` reference views a reference step shows: round-robin over the reference
    steps (0 = the main photo), so every view gets the same share of the reference schedule."""
    return math.floor(step * prob) % max(1, n_views)


def is_fused(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every parameter group runs torch's fused kernel (which takes ``found_inf``)."""
    return all(g.get("fused") for g in optimizer.param_groups)


def scaled_size(camera: Cameras, height: int) -> tuple[int, int]:
    """(width, height) at ``height`` pixels with the camera's aspect ratio."""
    return max(1, round(height * camera.width / camera.height)), height


def reference_losses(
    rgb: Tensor, opacity: Tensor, target: Tensor, background: Tensor, rgb_weight: float, mask_weight: float
) -> dict[str, Tensor]:
    """Eq. 2 inside the input's alpha, plus the mask loss against the alpha."""
    alpha = target[..., 3:]
    rgb_loss = F.mse_loss(rgb * alpha, over(target, background) * alpha)
    mask_loss = F.mse_loss(opacity, alpha)
    return {"ref_rgb": rgb_weight * rgb_loss, "ref_mask": mask_weight * mask_loss}


def turntable_cameras(reference: Cameras, n: int, resolution: int) -> Cameras:
    """``n`` views at the reference's elevation and distance, starting at its azimuth."""
    polar = float(torch.rad2deg(reference.polar[0]))
    az0 = float(torch.rad2deg(reference.azimuth[0]))
    fov = float(torch.rad2deg(reference.fov_y[0]))
    az = [az0 + 360.0 * k / n for k in range(n)]
    return orbit_cameras(polar, az, float(reference.radius[0]), fov, resolution, device=reference.device)


class OptimisationStage(ABC):
    """The shared loop. Subclasses set ``name``, ``cfg`` (with ``steps``, ``preview_every``,
    ``checkpoint_every``, ``seed``), ``optimizer`` and ``generator``, and list their modules
    in :meth:`modules`."""

    name: str = "stage"
    cfg: Any
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    progress_rate_hz: float = PROGRESS_RATE_HZ
    clock: Callable[[], float] = staticmethod(time.perf_counter)
    """Seconds, for elapsed times and the progress throttle."""
    deterministic: bool | None = None
    """torch's deterministic algorithms while the stage runs; None: on the CPU yes, on CUDA no (the
    runner sets its ``PipelineConfig.deterministic``)."""

    def __init__(self, device: torch.device | str, callback: ProgressCallback | None, cancel: CancelToken | None) -> None:
        self.device = torch.device(device)
        self.callback = callback
        self.cancel = cancel or CancelToken()
        self.step = 0
        self.elapsed_s = 0.0
        self.skipped_steps = 0
        self.mesh_previews = MeshPreviewer(self)

    @abstractmethod
    def train_step(self) -> dict[str, Tensor]:
        """One step; returns the weighted losses, detached (0-d tensors, still on the device)."""

    def optimise(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """Backward the sum of ``losses`` and take an optimizer step, unless the loss or any
        gradient is not finite: then the step is skipped (parameters and optimizer state
        untouched) and counted. Returns the losses detached."""
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        if isinstance(total, Tensor) and total.requires_grad:  # an empty render has no graph
            total.backward()
            found_inf = self._found_inf(total)
            if is_fused(self.optimizer):  # the check stays on the device (no host sync)
                cut = [c.overflow() for c in self.compactors() if c.overflow() is not None]
                self.optimizer.found_inf = found_inf if not cut else torch.maximum(found_inf, torch.stack(cut).any().float())
                try:
                    self.optimizer.step()
                finally:
                    del self.optimizer.found_inf
                self._skipped = found_inf if self._skipped is None else self._skipped + found_inf
            elif not bool(found_inf):
                self.optimizer.step()
            else:
                self.optimizer.zero_grad(set_to_none=True)
                self._skipped_host += 1
                log.warning("%s step %d: non-finite loss or gradient, step skipped (%d so far)",
                            self.name, self.step + 1, self.skipped_steps)
        if refresh_all(self.compactors()):  # the step's one host sync on a GPU
            log.info("%s step %d: a fixed-size gather was too small; it grew and the step was not applied",
                     self.name, self.step + 1)
        return {k: v.detach() if isinstance(v, Tensor) else torch.tensor(float(v)) for k, v in losses.items()}

    def compactors(self) -> list[Compactor]:
        """The fixed-size gathers of this stage's GPU branches: a step whose gather overflowed is not
        applied (its samples were cut short), and all are refreshed at the step's end in one sync."""
        return []

    @property
    def draws(self) -> torch.Generator:
        """The generator of per-step random draws: :attr:`generator` on the CPU, a generator on the
        device elsewhere (seeded from the stage's seed), so draws need no copy to the device."""
        if self.device.type == "cpu":
            return self.generator
        gen = self.__dict__.get("_device_generator")
        if gen is None:
            gen = self.__dict__["_device_generator"] = torch.Generator(self.device).manual_seed(int(self.cfg.seed) + 104729)
        return gen

    def _found_inf(self, total: Tensor) -> Tensor:
        """A 0-d float tensor on the device: 1 when the loss or any gradient is not finite, else 0."""
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        flags = [torch.isfinite(total.detach()).reshape(1)]
        if grads:
            flags.append(torch.isfinite(torch.stack(torch._foreach_norm(grads))).to(flags[0].device))
        return (~torch.cat(flags).all()).float()

    _skipped: Tensor | None = None
    """Device-side count of skipped steps (fused Adam); read only when reported."""
    _skipped_host: int = 0

    @property
    def skipped_steps(self) -> int:
        """Steps skipped as non-finite so far (reading it on a GPU waits for the device)."""
        return self._skipped_host + (int(self._skipped) if self._skipped is not None else 0)

    @skipped_steps.setter
    def skipped_steps(self, value: int) -> None:
        self._skipped_host, self._skipped = int(value), None

    def adam(self, groups: list[dict], betas: tuple[float, float], eps: float) -> torch.optim.Adam:
        """Adam for this stage's device: fused (device-side skip of non-finite steps) where the
        GPU branches are taken, torch's default implementation otherwise (bitwise as before)."""
        return torch.optim.Adam(groups, betas=betas, eps=eps, fused=True if takes_gpu_paths(self.device) else None)

    @abstractmethod
    def preview(self) -> Preview: ...

    def preview_surface(self) -> tuple[Any, Callable] | None:
        """The current surface (a Mesh) and the colour function for a live 3D preview; None: none."""
        return None

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """The modules whose state a checkpoint holds, by name."""

    def check_compatible(self, saved_cfg: dict) -> None:
        """Raise CheckpointError when a checkpoint's config cannot be loaded into this stage."""

    def set_reference(self, reference: ReferenceView, height: int) -> None:
        """The reference camera and its RGBA target at the stage's render height (aspect kept)."""
        w, h = scaled_size(reference.camera, height)
        self.reference_camera = reference.camera.resized(w, h).to(self.device)
        self.reference_target = resize_rgba(reference.rgba[None].float(), h, w).to(self.device)

    extra_references: tuple[tuple[Cameras, Tensor], ...] = ()
    """Extra reference views (``generate --view``): (camera, RGBA target) at the stage's render height."""

    def add_reference_views(self, views: list[ReferenceView]) -> None:
        """Extra photos with known cameras: they share the reference schedule with the main view."""
        height = self.reference_camera.height
        extras = []
        for view in views:
            w, h = scaled_size(view.camera, height)
            extras.append((view.camera.resized(w, h).to(self.device), resize_rgba(view.rgba[None].float(), h, w).to(self.device)))
        self.extra_references = tuple(extras)

    def reference_for_step(self) -> tuple[Cameras, Tensor]:
        """The reference view of this (reference) step: the main photo, or an extra view in turn."""
        k = reference_view_index(self.step, self.cfg.reference_view_prob, 1 + len(self.extra_references))
        return (self.reference_camera, self.reference_target) if k == 0 else self.extra_references[k - 1]

    def preview_cameras(self) -> Cameras:
        """The preview turntable: ``preview_views`` views around the reference elevation."""
        return turntable_cameras(self.reference_camera, self.cfg.preview_views, self.cfg.preview_resolution)

    def strip_preview(self, rgb: Tensor, opacity: Tensor, weighted_normals: Tensor) -> Preview:
        """A Preview event: colour on the top row, normals (already weighted by opacity) shaded
        onto white below, one column per view."""
        a = opacity.clamp(0, 1).cpu().numpy()
        shaded = weighted_normals.cpu().numpy() * 0.5 + 0.5 * a + (1.0 - a)
        img = grid_image([list(rgb.clamp(0, 1).cpu().numpy()), list(shaded)])
        return Preview(self.name, self.step, png_bytes(img), img.shape[1], img.shape[0], rgb.shape[0])

    def backgrounds(self, n: int, kind: str) -> Tensor:
        return background_color(kind, n, self.draws, self.device)

    def novel_cameras(self, guidance: object, resolution: int) -> tuple[Cameras, Tensor | None]:
        """Cameras for a guidance step: the guidance's own proposal, else random orbit views."""
        if isinstance(guidance, CameraProposer):
            cams, ids = guidance.propose_cameras(self.step, resolution, self.generator)
            return cams.to(self.device), ids
        v = self.cfg.views
        cams = sample_orbit_cameras(
            v.batch_size, v.polar_range_deg, v.azimuth_range_deg, v.radius_range, v.fov_range_deg,
            resolution, self.draws, self.device,
        )
        return cams, None

    def run(self, checkpoint_path: str | Path | None = None, steps: int | None = None) -> StageDone:
        """Train up to ``steps`` (default: the config's), from wherever the stage is, with torch's
        deterministic algorithms as :attr:`deterministic` says (so one seed gives one result on the CPU)."""
        with deterministic_algorithms(deterministic_mode(self.deterministic, self.device)):
            return self._run_steps(checkpoint_path, steps)

    def _run_steps(self, checkpoint_path: str | Path | None, steps: int | None) -> StageDone:
        total = steps if steps is not None else self.cfg.steps
        start_step = self.step
        t0 = self.clock()
        elapsed0 = self.elapsed_s
        interval = 1.0 / self.progress_rate_hz if self.progress_rate_hz > 0 else 0.0
        last_progress = -math.inf
        last_skipped = self._skipped_host
        try:
            while self.step < total:
                self.cancel.raise_if_cancelled()
                losses = self.train_step()
                now = self.clock()
                self.elapsed_s = elapsed0 + now - t0
                if now - last_progress >= interval or self.step >= total:
                    last_progress = now
                    eta = (now - t0) / (self.step - start_step) * (total - self.step)
                    reported = {k: float(v) for k, v in losses.items()}
                    skipped = self.skipped_steps
                    if skipped > last_skipped:
                        log.warning("%s: %d non-finite step(s) skipped so far", self.name, skipped)
                        last_skipped = skipped
                    emit(self.callback, Progress(self.name, self.step, total, reported, self.elapsed_s, eta))
                if checkpoint_path and self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                    self.save_checkpoint(checkpoint_path)
                if self.cfg.preview_every and self.step % self.cfg.preview_every == 0 and self.step < total:
                    emit(self.callback, self.preview())
                self.mesh_previews.maybe_emit(total)
        except BaseException:
            if checkpoint_path and self.step > start_step:
                self.save_checkpoint(checkpoint_path)
            raise
        if checkpoint_path:
            self.save_checkpoint(checkpoint_path)
        if self.cfg.preview_every:
            emit(self.callback, self.preview())
        self.mesh_previews.at_end()
        done = StageDone(self.name, self.step, self.elapsed_s, str(checkpoint_path) if checkpoint_path else None)
        emit(self.callback, done)
        return done

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "stage": self.name,
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "config": to_dict(self.cfg),
            "modules": {name: m.state_dict() for name, m in self.modules().items()},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "device_generator": self.draws.get_state() if self.draws is not self.generator else None,
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("stage") != self.name or state.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(
                f"not a {self.name}-stage checkpoint of version {CHECKPOINT_VERSION} "
                f"(found stage={state.get('stage')!r}, version={state.get('version')!r})"
            )
        try:
            from_dict(type(self.cfg), state["config"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"the checkpoint's config does not load: {exc}") from None
        self.check_compatible(state["config"])
        for name, module in self.modules().items():
            module.load_state_dict(state["modules"][name])
        fused = [g.get("fused") for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, flag in zip(self.optimizer.param_groups, fused):  # this device's choice, not the saver's
            group["fused"] = flag
        if is_fused(self.optimizer):  # fused Adam keeps its step counts on the parameters' device
            for p, st in self.optimizer.state.items():
                if "step" in st:
                    st["step"] = st["step"].to(p.device, torch.float32)
        self.generator.set_state(state["generator"].cpu())
        if state.get("device_generator") is not None and self.draws is not self.generator:
            self.draws.set_state(state["device_generator"].cpu())
        self.step = int(state["step"])
        self.elapsed_s = float(state["elapsed_s"])
        self.skipped_steps = int(state.get("skipped_steps", 0))

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
