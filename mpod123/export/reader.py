"""Read any glTF 2.0 (GLB or .gltf) or OBJ mesh, through trimesh, into one world-space textured mesh.

Other tools write what the spec allows and our writer never does: uint8/16/32
or no indices, several meshes and primitives, node hierarchies with TRS or
matrix transforms, strided buffer views, JPEG or PNG images, samplers that
repeat, and KHR_texture_transform. trimesh (a maintained, MIT-licensed library
that our tests already used) decodes the binary side: the buffers, accessors,
triangle strips, the node graph with each node's world transform, and the
images. Three things it does not keep, we take from the JSON ourselves:

* which glTF material a primitive uses (every material is renamed to its index
  before trimesh sees the file, so the mapping survives trimesh's objects);
* the base-colour texture's sampler (wrap modes) and KHR_texture_transform,
  which is applied to the primitive's UVs here, as the spec defines it;
* whether a node's transform mirrors (negative determinant), which by the spec
  reverses the winding: we flip such faces so they stay outward.

The result flattens the scene: every mesh instance in world space, all
primitives concatenated, one material index per face. UVs follow glTF (origin
at the image's top-left), which is what our renderer and baker use.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..runtime.errors import Mpod123Error
from .glb_bounds import check_glb_file_bounds

GLB_MAGIC = 0x46546C67
REPEAT, CLAMP_TO_EDGE, MIRRORED_REPEAT = 10497, 33071, 33648
_TAG = "mpod123-material-"
# extensions a file may *require* that still read correctly here
_UNDERSTOOD = {"KHR_texture_transform", "KHR_materials_unlit", "KHR_materials_emissive_strength",
               "KHR_materials_ior", "KHR_materials_specular", "KHR_materials_transmission",
               "KHR_materials_volume", "KHR_materials_clearcoat", "KHR_materials_sheen",
               "KHR_texture_basisu", "KHR_mesh_quantization"}


class MeshReadError(Mpod123Error, ValueError):
    """A mesh file that cannot be read; the message says why and what to do."""


@dataclass
class BaseColor:
    """One material's base colour: ``factor`` times the texture (when there is one)."""

    factor: np.ndarray = field(default_factory=lambda: np.ones(3, dtype=np.float32))
    """(3,) linear multiplier (glTF baseColorFactor's RGB)."""
    texture: np.ndarray | None = None
    """(H, W, 3) float32 in [0, 1], the image's stored (sRGB) values."""
    wrap: tuple[int, int] = (REPEAT, REPEAT)
    """The sampler's (wrapS, wrapT); glTF's default is REPEAT."""
    name: str = ""


@dataclass
class MeshAsset:
    """A whole file flattened into world space."""

    positions: np.ndarray
    """(V, 3) float32, world space (glTF's frame for glTF files; the file's own for OBJ)."""
    faces: np.ndarray
    """(F, 3) int64, counter-clockwise seen from outside."""
    uvs: np.ndarray | None
    """(V, 2) float32, glTF convention (v down), texture transform applied; None if no primitive has UVs."""
    face_material: np.ndarray
    """(F,) int64 index into ``materials``."""
    materials: list[BaseColor]


def _glb_chunks(data: bytes) -> tuple[dict, bytes]:
    """The JSON and the BIN chunk of a GLB, with the header checks a reader needs."""
    if len(data) < 20:
        raise MeshReadError("file too short to be a GLB")
    magic, version, length = struct.unpack_from("<III", data, 0)
    if magic != GLB_MAGIC:
        raise MeshReadError("not a binary glTF (bad magic): is it a .gltf, an OBJ or something else?")
    if version != 2:
        raise MeshReadError(f"glTF {version} is not supported: re-export as glTF 2.0")
    if length > len(data):
        raise MeshReadError(f"the file is truncated ({len(data)} of {length} bytes)")
    json_len, json_type = struct.unpack_from("<II", data, 12)
    if json_type != 0x4E4F534A or 20 + json_len > length:
        raise MeshReadError("the first GLB chunk is not a complete JSON chunk")
    try:
        gltf = json.loads(data[20 : 20 + json_len])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MeshReadError(f"the JSON chunk does not parse: {exc}") from None
    return gltf, data[20 + json_len : length]


def _glb_with_json(gltf: dict, rest: bytes) -> bytes:
    text = json.dumps(gltf, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    return struct.pack("<III", GLB_MAGIC, 2, 20 + len(text) + len(rest)) + struct.pack("<II", len(text), 0x4E4F534A) + text + rest


def _texture_transform(uv: np.ndarray, info: dict) -> np.ndarray:
    """KHR_texture_transform: uv' = T(offset) R(rotation) S(scale) uv, the spec's matrix."""
    ext = (info.get("extensions") or {}).get("KHR_texture_transform")
    if not ext:
        return uv
    ox, oy = ext.get("offset", [0.0, 0.0])
    sx, sy = ext.get("scale", [1.0, 1.0])
    r = float(ext.get("rotation", 0.0))
    c, s = np.cos(r), np.sin(r)
    m = np.array([[c * sx, s * sy, ox], [-s * sx, c * sy, oy]], dtype=np.float64)
    return np.c_[uv, np.ones(len(uv))] @ m.T


def _texcoord(info: dict) -> int:
    ext = (info.get("extensions") or {}).get("KHR_texture_transform") or {}
    return int(ext.get("texCoord", info.get("texCoord", 0)))


def _check_gltf(gltf: dict) -> None:
    if str(gltf.get("asset", {}).get("version", "")).split(".")[0] != "2":
        raise MeshReadError("asset.version must be 2.x: re-export as glTF 2.0")
    required = set(gltf.get("extensionsRequired", [])) - _UNDERSTOOD
    if required:
        raise MeshReadError(
            f"the file requires {', '.join(sorted(required))}, which this reader does not decode: "
            "re-export it without compression (e.g. Blender: glTF export, untick Compression)"
        )
    accessors = gltf.get("accessors", [])
    for mesh in gltf.get("meshes", []):
        for prim in mesh.get("primitives", []):
            for attr in ("POSITION", "TEXCOORD_0"):
                i = prim.get("attributes", {}).get(attr)
                if i is not None and 0 <= i < len(accessors) and accessors[i].get("normalized"):
                    raise MeshReadError(f"quantized (normalized integer) {attr} is not supported: re-export with float {attr}")


def _tag_materials(gltf: dict) -> list[dict]:
    """Rename every material to its index (trimesh keeps names) and return the originals."""
    originals = [json.loads(json.dumps(m)) for m in gltf.get("materials", [])]
    for i, m in enumerate(gltf.get("materials", [])):
        m["name"] = f"{_TAG}{i}"
    return originals


def _image_rgb(image) -> np.ndarray | None:
    if image is None:
        return None
    try:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except OSError as exc:
        raise MeshReadError(f"the base colour image does not decode: {exc}") from None


def _base_colors(gltf: dict, originals: list[dict], scene) -> list[BaseColor]:
    """One BaseColor per glTF material; the decoded images come from trimesh's materials."""
    images: dict[int, np.ndarray | None] = {}
    for geom in scene.geometry.values():
        material = getattr(getattr(geom, "visual", None), "material", None)
        name = getattr(material, "name", None) or ""
        if name.startswith(_TAG) and int(name[len(_TAG):]) not in images:
            images[int(name[len(_TAG):])] = _image_rgb(getattr(material, "baseColorTexture", None))
    out = []
    for i, m in enumerate(originals):
        pbr = m.get("pbrMetallicRoughness", {})
        factor = np.asarray(pbr.get("baseColorFactor", [1, 1, 1, 1])[:3], dtype=np.float32)
        info = pbr.get("baseColorTexture")
        wrap = (REPEAT, REPEAT)
        if info is not None:
            try:
                sampler = gltf["samplers"][gltf["textures"][info["index"]]["sampler"]]
                wrap = (int(sampler.get("wrapS", REPEAT)), int(sampler.get("wrapT", REPEAT)))
            except (KeyError, IndexError, TypeError):
                pass
        texture = images.get(i) if info is not None else None
        out.append(BaseColor(factor, texture, wrap, str(m.get("name", f"material_{i}"))))
    return out


def _flatten(scene, gltf: dict | None, materials: list[BaseColor]) -> MeshAsset:
    import trimesh

    originals = gltf.get("materials", []) if gltf else []
    positions, faces, uvs, face_material = [], [], [], []
    has_uv = False
    offset = 0
    untextured: dict[int, int] = {}  # material -> its factor-only twin, for primitives without UVs
    for node in scene.graph.nodes_geometry:
        transform, geom_name = scene.graph[node]
        geom = scene.geometry.get(geom_name)
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            continue  # points, lines and empty primitives carry no surface
        v = np.asarray(geom.vertices, dtype=np.float64) @ transform[:3, :3].T + transform[:3, 3]
        f = np.asarray(geom.faces, dtype=np.int64)
        if f.min() < 0 or f.max() >= len(v):
            raise MeshReadError(f"mesh {geom_name!r} has indices past its {len(v)} vertices: the file is damaged")
        if np.linalg.det(transform[:3, :3]) < 0:
            f = f[:, ::-1]
        visual = getattr(geom, "visual", None)
        name = getattr(getattr(visual, "material", None), "name", None) or ""
        index = int(name[len(_TAG):]) if name.startswith(_TAG) else -1  # -1: glTF's default material
        uv = getattr(visual, "uv", None) if getattr(visual, "kind", None) == "texture" else None
        if uv is not None and len(uv) == len(v):
            uv = np.array(uv, dtype=np.float64)  # trimesh flipped v in float32: within one rounding of the file's
            uv[:, 1] = 1.0 - uv[:, 1]  # trimesh stores OpenGL's bottom-left origin; glTF's is the top-left
            if 0 <= index < len(originals):
                info = originals[index].get("pbrMetallicRoughness", {}).get("baseColorTexture") or {}
                if _texcoord(info) != 0:
                    raise MeshReadError("the base colour texture uses TEXCOORD_1, which is not supported: bake it onto UV map 0")
                uv = _texture_transform(uv, info)
            uv = uv.astype(np.float32)
            has_uv = True
        else:
            uv = np.zeros((len(v), 2), dtype=np.float32)
            if index >= 0 and materials[index].texture is not None:
                if index not in untextured:
                    m = materials[index]
                    materials.append(BaseColor(m.factor, None, m.wrap, m.name))
                    untextured[index] = len(materials) - 1
                index = untextured[index]
        positions.append(v)
        faces.append(f + offset)
        uvs.append(uv)
        face_material.append(np.full(len(f), index, dtype=np.int64))
        offset += len(v)
    if not faces:
        raise MeshReadError("the file holds no triangles (only points, lines or empty meshes)")
    face_mat = np.concatenate(face_material)
    if (face_mat < 0).any():
        materials.append(BaseColor(name="default"))
        face_mat[face_mat < 0] = len(materials) - 1
    all_pos = np.concatenate(positions).astype(np.float32)
    if not np.isfinite(all_pos).all():
        raise MeshReadError("vertex positions contain NaN or infinity")
    return MeshAsset(
        all_pos,
        np.concatenate(faces),
        np.concatenate(uvs) if has_uv else None,
        face_mat,
        materials,
    )


def _load_scene(data: bytes, file_type: str, resolver=None):
    import trimesh

    try:
        loaded = trimesh.load(io.BytesIO(data), file_type=file_type, force="scene", resolver=resolver, process=False)
    except MeshReadError:
        raise
    except Exception as exc:  # trimesh raises many kinds on malformed files
        raise MeshReadError(f"the {file_type.upper()} does not decode: {type(exc).__name__}: {exc}") from None
    return loaded


def read_gltf_bytes(data: bytes, file_type: str = "glb", base_dir: Path | None = None) -> MeshAsset:
    """A GLB (or, with ``file_type="gltf"``, glTF JSON whose buffers sit in ``base_dir``) flattened to world space."""
    import trimesh

    if file_type == "glb":
        gltf, rest = _glb_chunks(data)
        check_glb_file_bounds(gltf, rest, MeshReadError)  # declared sizes <= the file's real bytes, before any array
    else:
        try:
            gltf, rest = json.loads(data), b""
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MeshReadError(f"the glTF JSON does not parse: {exc}") from None
        if not isinstance(gltf, dict):
            raise MeshReadError("the glTF JSON is not an object")
    _check_gltf(gltf)
    originals = _tag_materials(gltf)
    tagged = _glb_with_json(gltf, rest) if file_type == "glb" else json.dumps(gltf).encode()
    resolver = trimesh.resolvers.FilePathResolver(str(base_dir) + "/") if base_dir is not None else None
    scene = _load_scene(tagged, file_type, resolver)
    materials = _base_colors(gltf, originals, scene)
    return _flatten(scene, {"materials": originals}, materials)


def _read_obj(path: Path) -> MeshAsset:
    """OBJ (+ MTL + map_Kd image) through trimesh; one material per ``usemtl`` group."""
    import trimesh

    try:
        scene = trimesh.load(str(path), file_type="obj", force="scene", process=False, maintain_order=True)
    except Exception as exc:
        raise MeshReadError(f"the OBJ does not decode: {type(exc).__name__}: {exc}") from None
    materials: list[BaseColor] = []
    for geom in scene.geometry.values():
        material = getattr(getattr(geom, "visual", None), "material", None)
        if material is None:
            continue
        texture = _image_rgb(getattr(material, "image", None))
        diffuse = getattr(material, "diffuse", None)
        factor = np.ones(3, np.float32) if texture is not None or diffuse is None else np.asarray(diffuse[:3], np.float32) / 255.0
        if (getattr(material, "name", None) or "").startswith(_TAG):
            continue  # shared by an earlier group
        tag = f"{_TAG}{len(materials)}"
        materials.append(BaseColor(factor, texture, (REPEAT, REPEAT), str(getattr(material, "name", ""))))
        material.name = tag
    return _flatten(scene, None, materials)


def read_mesh_file(path: str | Path) -> MeshAsset:
    """A .glb, .gltf or .obj file flattened into world space (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise MeshReadError(f"no mesh file at {path}")
    suffix = path.suffix.lower()
    if suffix == ".glb":
        return read_gltf_bytes(path.read_bytes(), "glb")
    if suffix == ".gltf":
        return read_gltf_bytes(path.read_bytes(), "gltf", path.parent)
    if suffix == ".obj":
        return _read_obj(path)
    raise MeshReadError(f"cannot read a mesh from {path.name}: use .glb, .gltf or .obj")
