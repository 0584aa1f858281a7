"""Export: quadric decimation, UV unwrap (xatlas or a torch atlas), texture bake, GLB and OBJ writers;
reading any glTF 2.0 or OBJ file (trimesh underneath)."""

from .bake import bake_texture, dilate
from .decimate import decimate
from .exporter import ExportResult, export_mesh, read_mesh
from .gltf import GLBError, encode_glb, parse_glb, validate_glb
from .reader import BaseColor, MeshAsset, MeshReadError, read_mesh_file
from .uv import UnwrapError, UVMesh, triangle_atlas, unwrap

__all__ = [
    "BaseColor",
    "MeshAsset",
    "MeshReadError",
    "read_mesh_file",
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
