"""MPOD123: one image to a textured 3D asset (CVPR 2024), in torch.

Importing the package is cheap and loads no accelerator, service or Blender
module; the stages import what they need when they run.

The modules that lived at this package's top (and a few inside it) moved into
packages named for their role. Their old import paths keep working for one
release: ``import mpod123.progress`` gives the module ``mpod123.runtime.progress``
itself, with a ``DeprecationWarning`` that names the new path.
"""

import sys
import warnings
from importlib.machinery import ModuleSpec

__version__ = "0.1.0"

MOVED_MODULES = {
    "mpod123._optional": "mpod123.runtime.accelerators",
    "mpod123.accel_selftest": "mpod123.runtime.selftest",
    "mpod123.candidates": "mpod123.pipeline.candidates",
    "mpod123.dataset": "mpod123.bench.dataset",
    "mpod123.devices": "mpod123.runtime.devices",
    "mpod123.doctor": "mpod123.runtime.doctor",
    "mpod123.evaluation.commands": "mpod123.cli.evaluation",
    "mpod123.images": "mpod123.imaging.images",
    "mpod123.metrics": "mpod123.imaging.metrics",
    "mpod123.models": "mpod123.runtime.weights",
    "mpod123.overrides": "mpod123.config.overrides",
    "mpod123.preprocess": "mpod123.pipeline.preprocess",
    "mpod123.preprocess_command": "mpod123.cli.preprocess",
    "mpod123.progress": "mpod123.runtime.progress",
    "mpod123.prompt": "mpod123.pipeline.prompt",
    "mpod123.reconstruct": "mpod123.bench.reconstruct",
    "mpod123.setup_commands": "mpod123.cli.setup",
    "mpod123.stages.runner": "mpod123.pipeline.runner",
    "mpod123.synthetic": "mpod123.bench.synthetic",
    "mpod123.texture_command": "mpod123.cli.texture",
    "mpod123.texturing.bench": "mpod123.bench.texture",
    "mpod123.texturing.runner": "mpod123.texturing.texturer",
    "mpod123.tiny": "mpod123.runtime.tiny_models",
    "mpod123.views": "mpod123.pipeline.extra_views",
}
"""Old module path -> where it lives now (``mpod123.cli``, ``mpod123.config`` and ``mpod123.pipeline``
became packages that re-export what the old modules offered)."""


class _MovedModule:
    """Loads an old path as the module at its new path (the same object, so state is shared)."""

    def __init__(self, new: str) -> None:
        self.new = new
        self.own_spec: ModuleSpec | None = None

    def create_module(self, spec: ModuleSpec):
        warnings.warn(f"{spec.name} moved to {self.new}: import {self.new} instead (the old path goes in the "
                      "next release)", DeprecationWarning, stacklevel=2)
        __import__(self.new)
        module = sys.modules[self.new]
        self.own_spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        """Nothing to run: the module at the new path is already loaded. The import system has just set
        its ``__spec__`` to the old path's; give it back its own (reload, pickling and ``-m`` read it)."""
        module.__spec__ = self.own_spec


class _MovedModulesFinder:
    """A meta-path finder that answers only for the old paths in :data:`MOVED_MODULES`."""

    @staticmethod
    def find_spec(fullname: str, path=None, target=None) -> ModuleSpec | None:
        new = MOVED_MODULES.get(fullname)
        return None if new is None else ModuleSpec(fullname, _MovedModule(new))


if not any(isinstance(finder, _MovedModulesFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModulesFinder())
