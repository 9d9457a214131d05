"""Configuration: every environment variable and default folder the package reads, in one place.

Values are read when asked for (not at import), so a changed environment applies to the next call.
The README's "Configuration" table lists the same variables.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

from .errors import ConfigError

# The variant and the untrained model's seed every command and factory uses when none is given.
DEFAULT_VARIANT = "phase2"
DEFAULT_SEED = 0

# The largest image encode and decode accept, in pixels after padding to the model's alignment (the
# size the networks process): their memory grows with it, about 0.9 GB per megapixel for eager phase2
# on CPU (README, "Limits"). 2048 x 2048 takes every Kodak, CLIC and Tecnick image; raise it with
# --max-pixels or HPCM_MAX_PIXELS for larger ones.
DEFAULT_MAX_PIXELS = 2048 * 2048

# Threads per worker of hpcm compress/decompress and eval --ray when --threads is not given: on a CPU
# the cores go to separate images (one worker per core; images need no synchronisation, a network's
# threads do); on a GPU one thread serves the host side of one codec (the native coder has its own
# pool, below).
DEFAULT_CPU_THREADS = 1
DEFAULT_GPU_THREADS = 1
# The native coder's default thread count is the CPU count up to this: a 1920x1080 step has at most
# two substreams and a 3840x2160 one ten (hpcm.codec.rans.SUBSTREAM_SYMBOLS), so more threads
# rarely find work (DCVC-UF runs up to 8 rANS coders).
MAX_DEFAULT_CODER_THREADS = 8

# name -> what it sets; tests/test_config.py checks that the README's table lists each one
ENVIRONMENT = {
    "HPCM_CACHE_DIR": "cache folder for native libraries built on first use (default ~/.cache/hpcm-rwkv)",
    "HPCM_ENGINE_CACHE": "TensorRT engine cache (default <HPCM_CACHE_DIR>/engines)",
    "HPCM_BIWKV_PLUGIN": "path of libhpcm_biwkv_trt_plugin.so (default: build/ of the source tree)",
    "ONNXRUNTIME_INCLUDE_DIR": "folder with ONNX Runtime's onnxruntime_c_api.h: builds the native ORT op",
    "HPCM_BIWKV_ORT_OP": "a prebuilt native ONNX Runtime op library (instead of building one)",
    "HPCM_PURE_PYTHON_RANS": "1: use the pure-Python rANS coder even where the C++ one builds",
    "HPCM_CODER_THREADS": "threads of the native rANS coder (default: the CPU count, at most 8; the streams are "
                          "the same for any count)",
    "CXX": "C++ compiler for the native libraries (default g++, c++ or clang++ on PATH)",
    "HPCM_MAX_PIXELS": "largest image, in pixels after padding, that encode and decode accept (default 4194304 "
                       "= 2048x2048; the CLI's --max-pixels overrides it)",
}

# The repository root when running from a source checkout (the package folders sit beside it).
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def _env(name: str) -> Optional[str]:
    value = os.environ.get(name)
    return value if value else None


def cache_dir() -> Path:
    """Where native libraries built on first use are cached."""
    root = _env("HPCM_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "hpcm-rwkv"


def engine_cache_dir() -> Path:
    """Where TensorRT engines are cached."""
    root = _env("HPCM_ENGINE_CACHE")
    return Path(root) if root else cache_dir() / "engines"


def plugin_library() -> Optional[Path]:
    """The TensorRT plugin library named by the environment, if any."""
    value = _env("HPCM_BIWKV_PLUGIN")
    return Path(value) if value else None


def plugin_build_dirs() -> tuple[Path, ...]:
    """Build folders of a source checkout where ``cmake -S plugins -B build`` puts the plugin."""
    return (SOURCE_ROOT / "build", SOURCE_ROOT / "build" / "plugins")


def onnxruntime_include_dir() -> Optional[Path]:
    value = _env("ONNXRUNTIME_INCLUDE_DIR")
    return Path(value) if value else None


def onnxruntime_op_library() -> Optional[Path]:
    value = _env("HPCM_BIWKV_ORT_OP")
    return Path(value) if value else None


def pure_python_rans() -> bool:
    return _env("HPCM_PURE_PYTHON_RANS") == "1"


def coder_threads() -> int:
    """Threads that code the substreams of a step: ``HPCM_CODER_THREADS``, else the CPU count up to
    ``MAX_DEFAULT_CODER_THREADS``."""
    value = _env("HPCM_CODER_THREADS")
    if value is None:
        return min(os.cpu_count() or 1, MAX_DEFAULT_CODER_THREADS)
    if not value.strip().isdigit() or not 1 <= int(value) <= 256:
        raise ConfigError(f"HPCM_CODER_THREADS must be a whole number of threads from 1 to 256, got {value!r}")
    return int(value)


def cxx_compiler() -> Optional[str]:
    """The C++ compiler: ``$CXX`` as given (even when it does not exist: the build then says so),
    else the first of g++, c++, clang++ on PATH."""
    return _env("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def max_pixels() -> int:
    """The pixel limit per image of encode and decode: ``HPCM_MAX_PIXELS``, else ``DEFAULT_MAX_PIXELS``."""
    value = _env("HPCM_MAX_PIXELS")
    if value is None:
        return DEFAULT_MAX_PIXELS
    if not value.strip().isdigit() or int(value) < 1:
        raise ConfigError(f"HPCM_MAX_PIXELS must be a positive whole number of pixels, got {value!r}")
    return int(value)


def default_image_folder() -> Path:
    """The Kodak images of the shared checkout layout (``../shared/data/kodak`` beside the repo)."""
    return SOURCE_ROOT.parent / "shared" / "data" / "kodak"


def default_anchor_folder() -> Path:
    """Published Kodak R-D curves of the shared checkout layout (``../shared/data/anchors/kodak``)."""
    return SOURCE_ROOT.parent / "shared" / "data" / "anchors" / "kodak"
