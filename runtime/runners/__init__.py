"""The runners, in one place: their names, and how each is opened.

Each runner module is imported only when its runner is asked for (TensorRT's bindings fail to
import where its libraries are missing; ONNX Runtime is an optional dependency).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Runner

# name -> (module, class); the first is the default of every command that takes --backend.
RUNNERS = {
    "eager": ("hpcm.runtime.runners.eager", "EagerRunner"),
    "onnxruntime": ("hpcm.runtime.runners.onnxruntime", "OnnxRuntimeRunner"),
    "tensorrt": ("hpcm.runtime.runners.tensorrt", "TensorRTRunner"),
}
# Runners that run an export folder's graphs (the eager runner runs a PyTorch model).
GRAPH_RUNNERS = ("onnxruntime", "tensorrt")


def runner_class(name: str) -> type["Runner"]:
    from hpcm.errors import RunnerError

    if name not in RUNNERS:
        raise RunnerError(f"unknown backend {name!r}; use one of {', '.join(RUNNERS)}")
    module, cls = RUNNERS[name]
    return getattr(importlib.import_module(module), cls)
