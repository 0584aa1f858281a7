"""The managed backend, in one namespace: the environment (:mod:`managed_env`), the torch build for this
machine (:mod:`torch_build`), the install plan and the child process that runs it (:mod:`install_run`),
the parent's side of an install (:mod:`installer`) and shell-free command lines (:mod:`commands`).

All standard library, no bpy: tests drive it in plain Python.
"""

from __future__ import annotations

from .commands import (
    CREATE_NEW_PROCESS_GROUP,
    backend_environment,
    child_popen_options,
    expand_command,
    serve_command,
    split_command,
)
from .errors import EnvError
from .install_run import STEPS, VERIFY_CODE, InstallPlan, PipProgress, pip_install_commands, run_plan
from .installer import Installer, Status
from .managed_env import ENV_DIR, LOG, MARKER, STATUS, WHEEL_DIR, ManagedEnv, bundled_wheel, env_python, version_key, wheel_version
from .torch_build import (
    CUDA_VARIANTS,
    PYTORCH_INDEX,
    TorchBuild,
    choose_index,
    cuda_variant,
    detect_torch_build,
    run_quiet,
    wheel_index,
)

__all__ = [
    "CREATE_NEW_PROCESS_GROUP", "CUDA_VARIANTS", "ENV_DIR", "LOG", "MARKER", "PYTORCH_INDEX", "STATUS", "STEPS", "VERIFY_CODE",
    "WHEEL_DIR", "EnvError", "InstallPlan", "Installer", "ManagedEnv", "PipProgress", "Status", "TorchBuild",
    "backend_environment", "bundled_wheel", "child_popen_options", "choose_index", "cuda_variant", "detect_torch_build",
    "env_python", "expand_command", "pip_install_commands", "run_plan", "run_quiet", "serve_command", "split_command",
    "version_key", "wheel_index", "wheel_version",
]
