"""Neural fields: the hash-grid encoding, MLP heads and the NeRF field."""

from .hash_grid import HashEncoding, hash_grid_reference, level_layout
from .mlp import MLP
from .nerf_field import NeRFField

__all__ = ["MLP", "HashEncoding", "NeRFField", "hash_grid_reference", "level_layout"]
