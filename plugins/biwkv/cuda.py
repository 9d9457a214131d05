"""JIT build of the Bi-WKV CUDA kernel and its registration as the CUDA kernel of ``hpcm::biwkv``.

After ``load_cuda_kernel()``, ``torch.ops.hpcm.biwkv`` (and therefore ``hpcm.plugins.biwkv.biwkv``)
runs ``biwkv_kernel.cu`` for float32 / float16 CUDA tensors in either mode instead of the vectorised
closed form; float64 CUDA inputs keep the mode's guarded vectorised path. The build goes to PyTorch's extension cache
(``TORCH_EXTENSIONS_DIR``, by default under ``~/.cache``), never into the source tree.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import torch

from .contract import CONTRACT
from .op import eager_form

SOURCE_DIR = Path(__file__).resolve().parent
SOURCES = (SOURCE_DIR / "biwkv_kernel.cu", SOURCE_DIR / "torch_binding.cpp")
EXTENSION_NAME = "hpcm_biwkv_cuda"

_extension: ModuleType | None = None


def _cuda_kernel(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str) -> torch.Tensor:
    if k.dtype not in (torch.float32, torch.float16) or v.dtype != k.dtype:
        return eager_form(mode)(w, u, k, v).contiguous()
    assert _extension is not None
    return _extension.forward(w, u, k, v, CONTRACT.modes.index(mode))


def load_cuda_kernel(verbose: bool = False) -> ModuleType:
    """Build (once per source change) and load the extension; register it for ``CONTRACT.torch_op`` on CUDA.

    Returns the extension module, whose ``forward(w, u, k, v)`` calls the kernel directly.
    Raises RuntimeError when PyTorch sees no CUDA device, since nothing could run the kernel.
    """
    global _extension
    if _extension is not None:
        return _extension
    if not torch.cuda.is_available():
        raise RuntimeError(
            "load_cuda_kernel needs a CUDA build of PyTorch and a visible GPU "
            f"(torch {torch.__version__}, torch.version.cuda={torch.version.cuda}, "
            "torch.cuda.is_available() is False); on CPU the op already uses the vectorised implementation"
        )
    from torch.utils.cpp_extension import load

    module = load(
        name=EXTENSION_NAME,
        sources=[str(path) for path in SOURCES],
        extra_include_paths=[str(SOURCE_DIR)],
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3"],
        verbose=verbose,
    )
    _extension = module
    torch.library.register_kernel(CONTRACT.torch_op, "cuda", _cuda_kernel)
    return module
