"""Where the Bi-WKV TensorRT plugin library is (``biwkv_plugin.cpp``, built by ``plugins/CMakeLists.txt``).

The library is built with CMake against TensorRT's headers, not on first use like the CPU op
(``cpu.py``) or the CUDA kernel (``cuda.py``): this module only finds it, for the TensorRT runner
to load before it parses or deserialises an engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from hpcm import config
from hpcm.errors import RunnerError

from .contract import CONTRACT

PLUGIN_LIBRARY_NAME = "libhpcm_biwkv_trt_plugin.so"


def find_plugin_library(explicit: Optional[Path] = None) -> Path:
    """The plugin library: explicit path, else $HPCM_BIWKV_PLUGIN, else build/ of the source tree."""
    candidates = [explicit] if explicit else []
    if config.plugin_library():
        candidates.append(config.plugin_library())
    candidates += [folder / PLUGIN_LIBRARY_NAME for folder in config.plugin_build_dirs()]
    for path in candidates:
        if path is not None and path.is_file():
            return path
    tried = ", ".join(str(p) for p in candidates if p is not None)
    raise RunnerError(
        f"the {CONTRACT.op_type} TensorRT plugin library was not found (tried {tried}). Build it with "
        "`cmake -S plugins -B build -DTENSORRT_ROOT=<TensorRT with include/> && cmake --build build` "
        f"or point $HPCM_BIWKV_PLUGIN at {PLUGIN_LIBRARY_NAME}"
    )
