"""MPOD123: one image to a textured 3D asset (CVPR 2024), in torch.

Importing the package is cheap and loads no accelerator, service or Blender
module; the stages import what they need when they run.
"""

__version__ = "0.1.0"
