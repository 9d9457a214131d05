"""Builds the Bi-WKV kernel's GPU self-test and the TensorRT plugin for the CPU: the unchanged
kernel source, compiled by the host C++ compiler against ``simt_emulation.h`` (threads, barriers,
warp shuffles) and ``cuda_runtime_emulation.cpp`` (host memory, streams, graphs), under a sanitizer,
and linked with ``biwkv_kernel_test.cpp`` or with the plugin and ``biwkv_plugin_harness.cpp``.
See ``simt_emulation.h`` for what the emulation does and does not model."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

EMULATION_DIR = Path(__file__).resolve().parent
KERNEL_DIR = EMULATION_DIR.parents[1] / "plugins" / "biwkv"
KERNEL_SOURCE = KERNEL_DIR / "biwkv_kernel.cu"
SELF_TEST_SOURCE = KERNEL_DIR / "biwkv_kernel_test.cpp"

# `name<<<config>>>(` or `name<Template, Args>\n<<<config>>>(`; the argument list stays in place.
_LAUNCH = re.compile(r"([A-Za-z_]\w*(?:<[\w:, ]+>)?)\s*<<<(.*?)>>>\s*\(", re.S)

SANITIZER_FLAGS = {
    "address": ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"],
    "thread": ["-fsanitize=thread"],
}


def _toolkit_roots() -> list[Path]:
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    on_path = shutil.which("nvcc")
    if on_path:
        roots.append(str(Path(on_path).resolve().parents[1]))
    roots.append("/usr/local/cuda")
    return [Path(root) for root in roots if root]


def find_nvcc() -> str | None:
    """nvcc on PATH, under CUDA_HOME / CUDA_PATH, or in /usr/local/cuda."""
    candidates = [shutil.which("nvcc"), *(str(root / "bin" / "nvcc") for root in _toolkit_roots())]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def cuda_include_dir() -> Path | None:
    """The CUDA toolkit's include/ (host-usable headers: runtime API types, cuda_fp16.h), looked for
    under CUDA_HOME / CUDA_PATH, next to nvcc on PATH, then in /usr/local/cuda."""
    includes = (root / "include" for root in _toolkit_roots())
    return next((include for include in includes if (include / "cuda_runtime_api.h").is_file()), None)


def rewrite_launches(source: str) -> str:
    """Turns every ``kernel<<<grid, block, shared, stream>>>(args)`` into
    ``::simt::launch(grid, block, shared, stream, kernel, args)``; fails if any launch is left."""
    rewritten, count = _LAUNCH.subn(lambda m: f"::simt::launch({m.group(2)}, {m.group(1)}, ", source)
    if count == 0 or "<<<" in rewritten:
        raise ValueError(f"rewrote {count} kernel launches but {rewritten.count('<<<')} remain")
    return rewritten


def build_self_test(out_dir: Path, sanitizer: str, kernel_source: str | None = None) -> Path:
    """Compiles the kernel's GPU self-test against the emulated kernel (``kernel_source`` replaces
    the text of biwkv_kernel.cu, for mutation tests) and returns the executable's path."""
    return _link(out_dir, f"biwkv_kernel_test_{sanitizer}", sanitizer, kernel_source, [(SELF_TEST_SOURCE, [])])


def build_plugin_harness(out_dir: Path, tensorrt_include: Path, contract_definitions: list[str]) -> Path:
    """Compiles the TensorRT plugin against TensorRT's headers with the emulated kernel, and the
    harness that drives it as TensorRT would (``biwkv_plugin_harness.cpp``). ``contract_definitions``
    are the contract's names as CMake passes them (``WKVContract.compile_definitions``)."""
    if not (tensorrt_include / "NvInferRuntime.h").is_file():
        raise RuntimeError(f"no NvInferRuntime.h in {tensorrt_include}")
    trt = ["-isystem", str(tensorrt_include)]
    units = [(KERNEL_DIR / "biwkv_plugin.cpp", [*trt, *contract_definitions]),
             (EMULATION_DIR / "biwkv_plugin_harness.cpp", trt)]
    return _link(out_dir, "biwkv_plugin_harness", "address", None, units)


def _link(out_dir: Path, name: str, sanitizer: str, kernel_source: str | None,
          units: list[tuple[Path, list[str]]]) -> Path:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
    include = cuda_include_dir()
    if cxx is None or include is None:
        raise RuntimeError(f"needs a C++20 compiler and the CUDA headers (compiler: {cxx}, CUDA include: {include})")
    out_dir.mkdir(parents=True, exist_ok=True)
    kernel = out_dir / "biwkv_kernel_emulated.cpp"
    text = KERNEL_SOURCE.read_text() if kernel_source is None else kernel_source
    # The #line directive makes diagnostics and sanitizer reports name the real .cu file.
    kernel.write_text(f'#line 1 "{KERNEL_SOURCE}"\n{rewrite_launches(text)}')
    flags = ["-std=c++20", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas",
             *SANITIZER_FLAGS[sanitizer], f"-I{include}", f"-I{KERNEL_DIR}", f"-I{EMULATION_DIR}"]
    all_units = [(kernel, ["-include", "simt_emulation.h"]), (EMULATION_DIR / "cuda_runtime_emulation.cpp", []), *units]
    objects = []
    for source, extra in all_units:
        obj = out_dir / f"{source.stem}.o"
        _compile([cxx, *flags, *extra, "-c", str(source), "-o", str(obj)])
        objects.append(str(obj))
    executable = out_dir / name
    _compile([cxx, *flags, *objects, "-pthread", "-o", str(executable)])
    return executable


def _compile(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}\n{result.stdout}{result.stderr}")
