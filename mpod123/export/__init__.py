"""Export: UV unwrap (xatlas or a torch atlas), texture bake, GLB and OBJ writers."""

from .bake import bake_texture, dilate
from .decimate import decimate
from .exporter import ExportResult, export_mesh, read_mesh
from .gltf import GLBError, encode_glb, parse_glb, validate_glb
from .uv import UnwrapError, UVMesh, triangle_atlas, unwrap

__all__ = [
    "ExportResult",
    "GLBError",
    "UVMesh",
    "UnwrapError",
    "bake_texture",
    "decimate",
    "dilate",
    "encode_glb",
    "export_mesh",
    "parse_glb",
    "read_mesh",
    "triangle_atlas",
    "unwrap",
    "validate_glb",
]
