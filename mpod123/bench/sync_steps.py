"""Host syncs per training step: stage 1, textual inversion and stage 2 on tiny models, GPU branches taken.

Each scenario builds its stage with the tiny random diffusion models (the
production loaders and guidance classes, real sizes scaled down), takes a few
warm-up steps (the occupancy grid's warm-up, the first mask renders), then
counts the host syncs of ``steps`` steps with :class:`~mpod123.runtime.syncs.SyncCounter`
inside :func:`~mpod123.runtime.syncs.gpu_paths`, so the CPU runs the branches a GPU
takes. The budgets are the design's: one sync a step for the finiteness check
plus at most one (stage 1) or three (stage 2: the mesh's face count, its edges) for
the data-dependent sizes a step cannot know beforehand.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import StableDiffusionConfig, TextualInversionConfig, Zero123Config, detail_preset, outline_preset
from ..guidance import MultiViewSupervision
from ..guidance.stable_diffusion import StableDiffusionGuidance, load_stable_diffusion
from ..guidance.textual_inversion import TextualInversion, add_token
from ..guidance.zero123 import Zero123Guidance
from ..runtime.syncs import SyncCounter, gpu_paths
from ..runtime.tiny_models import save_tiny_stable_diffusion, save_tiny_zero123
from ..stages import DetailStage, OutlineStage, ReferenceView
from .synthetic import turntable_dataset

BUDGETS = {"stage1": 2, "inversion": 1, "stage2": 4}
"""Host syncs a step may take, at most (issue 28)."""


@dataclass
class StepSyncs:
    """Sync counts of one scenario: per counted step, by kind, and where they happen."""

    name: str
    per_step: list[int]
    twin_per_step: list[int] = field(default_factory=list)
    """Syncs inside the torch twins of accelerators a GPU uses instead (:data:`TWINS`)."""
    kinds: Counter = field(default_factory=Counter)
    sites: Counter = field(default_factory=Counter)

    @property
    def worst(self) -> int:
        return max(self.per_step) if self.per_step else 0

    def as_dict(self) -> dict:
        return {"name": self.name, "per_step": self.per_step, "max": self.worst, "budget": BUDGETS.get(self.name),
                "twin_per_step": self.twin_per_step,
                "kinds": dict(self.kinds), "sites": dict(self.sites.most_common(20))}


TWINS = ("rendering/rasterizer.py",)
"""The torch rasterizer: on a GPU nvdiffrast renders the mesh (its path gathers at fixed sizes);
its CPU twin's syncs are counted apart (``twin_per_step``)."""


def count_steps(name: str, step: Callable[[], object], steps: int) -> StepSyncs:
    """Run ``step`` ``steps`` times under a SyncCounter with the GPU branches taken."""
    out = StepSyncs(name, [])
    with gpu_paths():
        for _ in range(steps):
            with SyncCounter(where=True, twins=TWINS) as counter:
                step()
            out.per_step.append(counter.total)
            out.twin_per_step.append(sum(counter.twin_counts.values()))
            out.kinds.update(counter.counts)
            out.sites.update(counter.sites)
    return out


def _reference(resolution: int = 32) -> ReferenceView:
    views = turntable_dataset(4, resolution)
    return ReferenceView(views.images[0], views.cameras[0])


def stage1_scenario(root: Path, warmup: int = 4) -> OutlineStage:
    """A draft-sized outline stage with the tiny Zero-1-to-3 guidance, past the grid's warm-up."""
    ref = _reference()
    cfg = outline_preset("draft")
    cfg.render.resolution, cfg.preview_every, cfg.checkpoint_every = 24, 0, 0
    cfg.occupancy.warmup_steps, cfg.occupancy.update_every = 2, 2
    cfg.regulariser_every = 1
    zcfg = Zero123Config(model=str(save_tiny_zero123(root / "zero123")))
    with gpu_paths():
        guidance = Zero123Guidance(zcfg, ref.rgba[..., :3] * ref.rgba[..., 3:] + 1 - ref.rgba[..., 3:], ref.camera)
        stage = OutlineStage(cfg, ref, guidance)
        for _ in range(warmup):
            stage.train_step()
    return stage


def inversion_scenario(root: Path) -> tuple[TextualInversion, Callable[[], object]]:
    """Textual inversion on the tiny Stable Diffusion: the stage's own per-step call."""
    models = load_stable_diffusion(str(save_tiny_stable_diffusion(root / "sd")))
    ref = _reference()
    ti = TextualInversion(TextualInversionConfig(steps=4, batch_size=2, augmentations=4, resolution=32), models)
    with gpu_paths():
        ti.encode_pool(ref.rgba)
        opt = ti.optimizer()
    gen = torch.Generator().manual_seed(1)
    return ti, lambda: ti.step(ti.draw(gen), opt)


def stage2_scenario(root: Path, warmup: int = 2) -> DetailStage:
    """A small detail stage with the tiny Stable Diffusion guidance (DAI, MRCA) on a stage-1 field."""
    ref = _reference()
    ocfg = outline_preset("draft")
    ocfg.render.resolution, ocfg.preview_every, ocfg.checkpoint_every = 24, 0, 0
    ocfg.nerf.blob_density = 40.0
    views = turntable_dataset(4, 24)
    outline = OutlineStage(ocfg, ref, MultiViewSupervision(views.images, views.cameras))
    outline.grid.update(0, outline.field.density, outline.renderer.step_size, outline.generator)
    models = load_stable_diffusion(str(save_tiny_stable_diffusion(root / "sd2")))
    add_token(models, "<e>", torch.randn(models.text_encoder.get_input_embeddings().weight.shape[1],
                                          generator=torch.Generator().manual_seed(0)))
    dai = StableDiffusionGuidance(StableDiffusionConfig(model=models.source), models)
    dcfg = detail_preset("draft")
    dcfg.resolution, dcfg.nvm_mask_resolution, dcfg.preview_every, dcfg.checkpoint_every = 32, 32, 0, 0
    dcfg.reference_view_prob, dcfg.dmtet.resolution, dcfg.dmtet.init_threshold = 0.0, 16, 5.0
    with gpu_paths():
        stage = DetailStage(dcfg, ref, dai, outline.field, outline.masks)
        for _ in range(warmup):
            stage.train_step()
    return stage


def measure(steps: int = 4) -> list[StepSyncs]:
    """The three scenarios' counts, ``steps`` steps each."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        out = [count_steps("stage1", stage1_scenario(root).train_step, steps)]
        _, ti_step = inversion_scenario(root)
        out.append(count_steps("inversion", ti_step, steps))
        out.append(count_steps("stage2", stage2_scenario(root).train_step, steps))
    return out


__all__ = ["BUDGETS", "StepSyncs", "count_steps", "inversion_scenario", "measure", "stage1_scenario", "stage2_scenario"]
