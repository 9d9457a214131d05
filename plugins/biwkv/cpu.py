"""The CPU Bi-WKV (``biwkv_cpu.cpp``) from Python, and its ONNX Runtime custom-op library.

* ``biwkv_cpu(w, u, k, v, mode)``: the compiled scan through ctypes (tests, benchmarks).
* ``ort_op_library()``: ``biwkv_ort_op.cpp`` + ``biwkv_cpu.cpp`` built into a library for
  ``SessionOptions.register_custom_ops_library``; exported graphs then run their custom node
  natively on ONNX Runtime's CPU provider. Building needs ONNX Runtime's C API header
  ``onnxruntime_c_api.h``, which the Python wheel does not ship: point ``ONNXRUNTIME_INCLUDE_DIR``
  at a folder holding it (``include/onnxruntime/core/session`` of microsoft/onnxruntime), or
  ``HPCM_BIWKV_ORT_OP`` at a library built elsewhere.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from hpcm import config
from hpcm.errors import ConfigError, RunnerError, one_line
from hpcm.native import build_shared_library

from .contract import CONTRACT

SOURCE_DIR = Path(__file__).resolve().parent
CPU_SOURCE = SOURCE_DIR / "biwkv_cpu.cpp"
CPU_HEADERS = [SOURCE_DIR / "biwkv_cpu.h", SOURCE_DIR / "biwkv_mode.h"]
ORT_OP_SOURCE = SOURCE_DIR / "biwkv_ort_op.cpp"
ORT_INCLUDE_ENV = "ONNXRUNTIME_INCLUDE_DIR"
ORT_LIBRARY_ENV = "HPCM_BIWKV_ORT_OP"
ORT_HEADER = "onnxruntime_c_api.h"

_cpu: Optional[ctypes.CDLL] = None


class OrtOpUnavailable(RunnerError):
    """The native ONNX Runtime op cannot be had here; the message says what would provide it."""


def _cpu_library() -> ctypes.CDLL:
    global _cpu
    if _cpu is None:
        lib = ctypes.CDLL(str(build_shared_library("hpcm_biwkv_cpu", [CPU_SOURCE], CPU_HEADERS)))
        pointer = ctypes.c_void_p
        for name in ("hpcm_biwkv_cpu_f32", "hpcm_biwkv_cpu_f16"):
            function = getattr(lib, name)
            function.restype = ctypes.c_int
            function.argtypes = [pointer] * 5 + [ctypes.c_int64] * 3 + [ctypes.c_int32, ctypes.c_int]
        _cpu = lib
    return _cpu


def biwkv_cpu(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str = CONTRACT.default_mode,
              threads: int = 0) -> torch.Tensor:
    """y of the contract in ``mode`` from CPU tensors: w, u (C,) float32; k, v (B, C, T) float32 or float16."""
    if mode not in CONTRACT.modes:
        raise ValueError(f"unknown mode {mode!r}; the contract's modes: {', '.join(CONTRACT.modes)}")
    if k.dtype not in (torch.float32, torch.float16) or v.dtype != k.dtype or k.dim() != 3 or v.shape != k.shape:
        raise ValueError(f"k and v must be (B, C, T) float32/float16 of one dtype; got {k.dtype} {tuple(k.shape)}, "
                         f"{v.dtype} {tuple(v.shape)}")
    if w.shape != (k.shape[1],) or u.shape != w.shape:
        raise ValueError(f"w and u must be ({k.shape[1]},); got {tuple(w.shape)} and {tuple(u.shape)}")
    arrays = [np.ascontiguousarray(t.detach().cpu().numpy()) for t in (w.float(), u.float(), k, v)]
    y = np.empty_like(arrays[2])
    lib = _cpu_library()
    function = lib.hpcm_biwkv_cpu_f16 if k.dtype == torch.float16 else lib.hpcm_biwkv_cpu_f32
    if function(*(a.ctypes.data for a in arrays), y.ctypes.data, *k.shape, CONTRACT.modes.index(mode), threads) != 0:
        raise ValueError(f"biwkv_cpu: invalid sizes {tuple(k.shape)}")
    return torch.from_numpy(y)


def _checked_prebuilt(library: Path) -> Path:
    """``HPCM_BIWKV_ORT_OP``'s library when it is a shared library with ONNX Runtime's custom-op entry
    point, else a ConfigError: a setting that was given is never ignored."""
    remedy = (f"point {ORT_LIBRARY_ENV} at a library built from plugins/biwkv/biwkv_ort_op.cpp, or unset it "
              "(the node then runs as a Python op)")
    if not library.is_file():
        raise ConfigError(f"{ORT_LIBRARY_ENV}={library} does not exist or is not a file: {remedy}")
    try:
        loaded = ctypes.CDLL(str(library.resolve()))
    except OSError as exc:
        raise ConfigError(f"{ORT_LIBRARY_ENV}={library} is not a loadable shared library ({one_line(str(exc))}): "
                          f"{remedy}") from exc
    if not hasattr(loaded, "RegisterCustomOps"):
        raise ConfigError(f"{ORT_LIBRARY_ENV}={library} is not an ONNX Runtime custom-op library (it has no "
                          f"RegisterCustomOps): {remedy}")
    return library


def ort_op_library(include_dir: Optional[Path] = None) -> Path:
    """The ONNX Runtime custom-op library: ``HPCM_BIWKV_ORT_OP`` if set, else built (once) against
    ``onnxruntime_c_api.h`` in ``include_dir`` or ``ONNXRUNTIME_INCLUDE_DIR``."""
    prebuilt = config.onnxruntime_op_library()
    if prebuilt:
        return _checked_prebuilt(prebuilt)
    folder = include_dir or config.onnxruntime_include_dir()
    if not folder:
        raise OrtOpUnavailable(
            f"the native {CONTRACT.op_type} op for ONNX Runtime needs ONNX Runtime's C API header: set "
            f"{ORT_INCLUDE_ENV} to a folder holding {ORT_HEADER} (include/onnxruntime/core/session of "
            f"microsoft/onnxruntime, release 1.16 or newer), or {ORT_LIBRARY_ENV} to a built library"
        )
    header = Path(folder) / ORT_HEADER
    if not header.is_file():
        raise OrtOpUnavailable(f"{header} does not exist: {ORT_INCLUDE_ENV} must name the folder holding {ORT_HEADER}")
    return build_shared_library("hpcm_biwkv_ort_op", [ORT_OP_SOURCE, CPU_SOURCE], [*CPU_HEADERS, header],
                                include_dirs=[SOURCE_DIR, Path(folder)], flags=CONTRACT.compile_definitions())
