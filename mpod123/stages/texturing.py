"""The texturing stage: stage 2 with the geometry given (an artist's mesh) instead of a DMTet.

Texturing an existing mesh is the detail stage with its geometry held fixed:
the same reference-view losses, the same novel views scored by a prior (Stable
Diffusion SDS with DAI and MRCA in the product, multi-view supervision in the
benchmark), the same lighting of prior-scored views. What changes:

* the surface is the given :class:`~mpod123.geometry.Mesh` (already normalised
  into the unit sphere), not a DMTet from a NeRF;
* the "stage-1 masks" that feed MRCA (and L_nvm) are the mesh's own
  silhouettes at each camera, rendered once per fixed view and cached;
* the texture field is a fresh :class:`~mpod123.fields.NeRFField` (only its
  colour is read), since there is no stage-1 field to carry over, trained at
  ``fresh_texture_lr`` rather than the fine-tuning ``lr``.

The given mesh is welded by position first (:meth:`~mpod123.geometry.Mesh.welded`):
a glTF splits its vertices at UV seams, and the copies of one position must
move as one and must not look like a boundary (a silhouette edge) to the
antialiasing. The stage renders and regularises the welded surface;
:meth:`TexturingStage.split_vertices` splits it again, for the export only.

With ``refine_geometry`` a per-position offset (bounded by ``tanh`` to
``deform_scale`` times the mesh's radius) is learned as well, with the detail
stage's normal-consistency and Laplacian terms and L_nvm against the input
mesh's own silhouettes, so the shape can only move a little. Without it those
terms are constants and are left out (they would cost time and do nothing).

Everything else (the step, the novel-view draws, the mask cache, shading) is
:class:`~mpod123.stages.detail.DetailStage`'s own code.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ..camera import Cameras
from ..config import DetailStageConfig, NeRFFieldConfig
from ..fields import NeRFField
from ..geometry import Mesh
from ..guidance import Guidance
from ..runtime.progress import CancelToken, ProgressCallback
from ..rendering import MeshRenderer, MeshRenderOutput
from ..rendering.fixed_mesh import FixedMeshRenderer
from .base import OptimisationStage, ReferenceView
from .detail import DetailStage

STAGE = "texture"


class VertexOffsets(nn.Module):
    """Learned per-vertex displacements, ``scale * tanh(raw)``: zero at the start, bounded always."""

    def __init__(self, n_vertices: int, scale: float, device: torch.device) -> None:
        super().__init__()
        self.scale = scale
        self.raw = nn.Parameter(torch.zeros(n_vertices, 3, device=device))

    def forward(self) -> Tensor:
        return self.scale * torch.tanh(self.raw)


class TexturingStage(DetailStage):
    """Stage 2 on a given mesh; see the module docstring."""

    name = STAGE

    def __init__(
        self,
        cfg: DetailStageConfig,
        reference: ReferenceView,
        guidance: Guidance,
        mesh: Mesh,
        field_cfg: NeRFFieldConfig | None = None,
        refine_geometry: bool = False,
        device: torch.device | str = "cpu",
        callback: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        OptimisationStage.__init__(self, device, callback, cancel)  # not DetailStage's: there is no DMTet to build
        if mesh.n_faces == 0:
            raise ValueError("the mesh to texture has no faces")
        self.refine_geometry = refine_geometry
        if not refine_geometry:  # constants with the geometry fixed: leave them out
            cfg = dataclasses.replace(cfg, nvm_weight=0.0, normal_consistency_weight=0.0, laplacian_weight=0.0)
        self.cfg = cfg
        self.guidance = guidance
        split = Mesh(mesh.vertices.detach().float().to(self.device), mesh.faces.to(self.device))
        self.input_mesh, self.position_index = split.welded()
        """The surface as one vertex per position, and each given vertex's index into it."""
        self.renderer = MeshRenderer(cfg.rasterizer_backend, self.device)
        self.fixed_renderer = (FixedMeshRenderer(self.input_mesh, normals=cfg.shading_normals)
                               if self.renderer.backend == "torch" else None)
        """With the geometry fixed, each camera's rasterisation is made once (the torch path's main cost)."""
        self.stage1_masks = self.silhouettes
        torch.manual_seed(cfg.seed)  # the field's initial weights come from the seed
        self.texture = NeRFField(field_cfg or NeRFFieldConfig(), device=self.device).requires_grad_(True)
        radius = float(self.input_mesh.vertices.norm(dim=-1).max())
        self.offsets = VertexOffsets(self.input_mesh.n_vertices, cfg.dmtet.deform_scale * 0.1 * radius, self.device)
        self.offsets.requires_grad_(refine_geometry)
        self.set_reference(reference, cfg.resolution)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.nvm_cache: dict[tuple, Tensor] = {}
        self.camera_pool: Cameras | None = None
        self.init_threshold = None
        encoding = list(self.texture.encoding.parameters())  # a fresh field; its hash grid at the scale stage 2 uses
        heads = [p for n, p in self.texture.named_parameters() if not n.startswith("encoding.")]
        groups = [{"params": encoding, "lr": cfg.fresh_texture_lr * cfg.texture_encoding_lr_scale},
                  {"params": heads, "lr": cfg.fresh_texture_lr}]
        if refine_geometry:
            groups.append({"params": list(self.offsets.parameters()), "lr": cfg.deform_lr})
        self.optimizer = self.adam(groups, cfg.adam_betas, cfg.adam_eps)

    @torch.no_grad()
    def silhouettes(self, cameras: Cameras) -> Tensor:
        """The input mesh's own masks (B, H, W) at these cameras: what MRCA and L_nvm are fed."""
        return MeshRenderer.render(self.renderer, self.input_mesh, cameras.to(self.device)).opacity[..., 0]

    def render_mesh(self, mesh: Mesh, cameras: Cameras, background: Tensor | None,
                    with_normals: bool = False) -> MeshRenderOutput:
        if self.fixed_renderer is not None and not self.refine_geometry:
            return self.fixed_renderer.render(cameras, self.texture.color, background, with_normals)
        return super().render_mesh(mesh, cameras, background, with_normals)

    def mesh(self) -> Mesh:
        if not self.refine_geometry:
            return self.input_mesh
        return Mesh(self.input_mesh.vertices + self.offsets(), self.input_mesh.faces)

    def split_vertices(self) -> Tensor:
        """The current surface's positions for each vertex of the mesh as given (V_given, 3): copies of
        one position stay identical."""
        return self.mesh().vertices[self.position_index]

    def modules(self) -> dict[str, nn.Module]:
        return {"texture": self.texture, "offsets": self.offsets}

    def check_compatible(self, saved_cfg: dict) -> None:
        """Any texturing checkpoint of the same mesh loads (the module shapes are checked by torch)."""


__all__ = ["TexturingStage", "VertexOffsets"]
