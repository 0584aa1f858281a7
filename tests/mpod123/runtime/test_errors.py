"""What a user can fix derives from one base, and keeps the built-in base callers caught before."""

from __future__ import annotations

import importlib

import pytest

from mpod123.runtime.errors import DeviceError, Mpod123Error, UsageError

USER_FIXABLE = [
    ("mpod123.runtime.accelerators", "BackendUnavailable", RuntimeError),
    ("mpod123.runtime.weights", "ModelNotFound", FileNotFoundError),
    ("mpod123.evaluation.config", "WeightsUnavailable", RuntimeError),
    ("mpod123.evaluation.config", "EvalInputError", ValueError),
    ("mpod123.config.overrides", "OverrideError", ValueError),
    ("mpod123.stages.base", "CheckpointError", RuntimeError),
    ("mpod123.texturing.camera_file", "CameraFileError", ValueError),
    ("mpod123.pipeline.preprocess", "InputImageError", ValueError),
    ("mpod123.pipeline.extra_views", "ViewSpecError", ValueError),
    ("mpod123.pipeline.runner", "RunError", RuntimeError),
    ("mpod123.pipeline.candidates", "NoUsableCandidate", RuntimeError),
    ("mpod123.pipeline.prompt", "PromptError", ValueError),
    ("mpod123.export.uv", "UnwrapError", RuntimeError),
    ("mpod123.export.gltf", "GLBError", ValueError),
    ("mpod123.export.reader", "MeshReadError", ValueError),
    ("mpod123.guidance.textual_inversion", "EmbeddingError", ValueError),
    ("mpod123.bench.dataset", "DatasetError", ValueError),
    ("backend.commands", "ServiceRequestError", Exception),
]


@pytest.mark.parametrize("module, name, builtin", USER_FIXABLE)
def test_user_fixable_errors_share_the_base_and_keep_their_builtin(module, name, builtin):
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, Mpod123Error) and issubclass(cls, builtin)


def test_control_flow_and_our_own_failures_are_not_user_errors():
    from mpod123.runtime.progress import Cancelled

    assert not issubclass(Cancelled, Mpod123Error)
    assert issubclass(UsageError, ValueError) and issubclass(DeviceError, ValueError)


def test_a_device_this_machine_lacks_is_a_device_error():
    import torch

    from mpod123.runtime.devices import resolve_device

    with pytest.raises(DeviceError, match="not a device"):
        resolve_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="sees no CUDA device"):
            resolve_device("cuda")
