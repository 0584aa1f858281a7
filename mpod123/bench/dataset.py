"""Multi-view datasets in the NeRF-synthetic ``transforms.json`` format.

The format: ``camera_angle_x`` (horizontal field of view, radians) and
``frames``, each with a ``file_path`` (relative, with or without ``.png``) and a
4x4 camera-to-world ``transform_matrix`` in Blender's world with the OpenGL
camera frame; images are RGBA. We read them into our Y-up world (see
:mod:`mpod123.camera.conventions`) and can write them back, which is how the
tests and benchmarks make datasets of their own.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..camera import Cameras, blender_c2w_to_world, world_c2w_to_blender
from ..runtime.errors import Mpod123Error


class DatasetError(Mpod123Error, ValueError):
    """A dataset folder that cannot be read; the message says which file and why."""


@dataclass
class MultiViewDataset:
    """RGBA views (N, H, W, 4) in [0, 1] with their cameras, in our world."""

    images: Tensor
    cameras: Cameras
    names: list[str]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 4:
            raise DatasetError(f"images must be (N, H, W, 4), got {tuple(self.images.shape)}")
        if len(self.cameras) != self.images.shape[0] or len(self.names) != self.images.shape[0]:
            raise DatasetError("images, cameras and names must have the same length")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, indices: list[int]) -> MultiViewDataset:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return MultiViewDataset(self.images[idx], self.cameras[idx], [self.names[i] for i in indices])

    def split_holdout(self, k: int) -> tuple[MultiViewDataset, MultiViewDataset]:
        """(train, held-out): ``k`` views spread evenly over the sequence are held out."""
        n = len(self)
        if not 0 <= k < n:
            raise DatasetError(f"cannot hold out {k} of {n} views: keep at least one for training")
        held = sorted({int(round((i + 0.5) * n / k)) % n for i in range(k)}) if k else []
        if len(held) < k:  # rounding collided; fill with the first unused indices
            held = sorted(set(held) | set([i for i in range(n) if i not in held][: k - len(held)]))
        train = [i for i in range(n) if i not in held]
        return self.subset(train), self.subset(held)


def _image_path(root: Path, file_path: str) -> Path:
    path = (root / file_path).resolve()
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        path = path.with_name(path.name + ".png")
    if root.resolve() not in path.parents:
        raise DatasetError(f"frame path {file_path!r} points outside the dataset folder {root}")
    return path


def load_rgba(path: Path) -> Tensor:
    """An image file as an RGBA float tensor (H, W, 4) in [0, 1]; opaque when it has no alpha."""
    try:
        with Image.open(path) as img:
            img.load()
            rgba = img.convert("RGBA")
    except FileNotFoundError:
        raise DatasetError(f"missing image {path}") from None
    except Exception as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from None
    return torch.from_numpy(np.asarray(rgba, dtype=np.float32) / 255.0)


def read_nerf_synthetic(root: str | Path, split: str = "train", scale: float = 1.0) -> MultiViewDataset:
    """Read ``transforms_<split>.json`` (or ``transforms.json``) under ``root``.

    ``scale`` multiplies camera positions, to bring an object into our unit
    sphere (the Blender NeRF-synthetic scenes need about 1/1.5).
    """
    root = Path(root)
    candidates = [root / f"transforms_{split}.json", root / "transforms.json"]
    meta_path = next((p for p in candidates if p.is_file()), None)
    if meta_path is None:
        raise DatasetError(f"no transforms_{split}.json or transforms.json in {root}")
    try:
        meta = json.loads(meta_path.read_text())
        fov_x = float(meta["camera_angle_x"])
        frames = meta["frames"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{meta_path} is not a NeRF-synthetic transforms file: {exc}") from None
    if not frames:
        raise DatasetError(f"{meta_path} lists no frames")
    images, mats, names = [], [], []
    for i, frame in enumerate(frames):
        try:
            mat = torch.tensor(frame["transform_matrix"], dtype=torch.float32)
            file_path = frame["file_path"]
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{meta_path}: frame {i} is malformed: {exc}") from None
        if mat.shape != (4, 4):
            raise DatasetError(f"{meta_path}: frame {i} transform_matrix must be 4x4")
        images.append(load_rgba(_image_path(root, file_path)))
        mats.append(mat)
        names.append(str(file_path))
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise DatasetError(f"{root}: images differ in size {sorted(shapes)}")
    h, w = images[0].shape[:2]
    # camera_angle_x is horizontal; our cameras store the vertical field of view.
    fov_y = 2.0 * math.atan(math.tan(0.5 * fov_x) * h / w)
    c2w = blender_c2w_to_world(torch.stack(mats), scale=scale)
    cams = Cameras(c2w, torch.full((len(frames),), fov_y), w, h)
    return MultiViewDataset(torch.stack(images), cams, names)


def write_nerf_synthetic(root: str | Path, dataset: MultiViewDataset, split: str = "train") -> Path:
    """Write ``dataset`` as ``transforms_<split>.json`` plus RGBA PNGs under ``root/<split>/``."""
    root = Path(root)
    (root / split).mkdir(parents=True, exist_ok=True)
    cams = dataset.cameras
    fov_x = 2.0 * math.atan(math.tan(0.5 * float(cams.fov_y[0])) * cams.width / cams.height)
    c2w = world_c2w_to_blender(cams.c2w.detach().cpu().float())
    frames = []
    for i in range(len(dataset)):
        rel = f"./{split}/r_{i}"
        arr = (dataset.images[i].detach().cpu().clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
        Image.fromarray(arr, "RGBA").save(root / split / f"r_{i}.png")
        frames.append({"file_path": rel, "transform_matrix": c2w[i].tolist()})
    meta_path = root / f"transforms_{split}.json"
    meta_path.write_text(json.dumps({"camera_angle_x": fov_x, "frames": frames}, indent=1))
    return meta_path


def write_dataset_mesh(root: str | Path, mesh, name: str = "mesh.obj") -> Path:
    """Write a ground-truth mesh (given in our world) as OBJ in the dataset's Blender Z-up frame."""
    from ..camera.conventions import BLENDER_TO_WORLD

    verts = mesh.vertices.detach().cpu().double() @ BLENDER_TO_WORLD[:3, :3].double()  # ours -> Blender
    path = Path(root) / name
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in verts.tolist()]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in mesh.faces.tolist()]
    path.write_text("\n".join(lines) + "\n")
    return path


def read_dataset_mesh(root: str | Path, scale: float = 1.0):
    """The dataset's ``mesh.glb`` or ``mesh.obj`` in our world, or None.

    An OBJ is taken to be in the dataset's world frame (Blender Z-up, like the
    cameras); a GLB is Y-up by the glTF spec, which is already our frame.
    """
    from ..camera.conventions import BLENDER_TO_WORLD
    from ..export import read_mesh
    from ..geometry import Mesh

    for name in ("mesh.glb", "mesh.obj"):
        path = Path(root) / name
        if path.is_file():
            mesh = read_mesh(path)
            verts = mesh.vertices.double()
            if path.suffix == ".obj":
                verts = verts @ BLENDER_TO_WORLD[:3, :3].double().T
            verts = verts * scale
            return Mesh(verts.float(), mesh.faces)
    return None
