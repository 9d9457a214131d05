"""CMake build of plugins/: the CUDA kernel library everywhere nvcc exists, the TensorRT plugin
when TensorRT's headers are given (env TENSORRT_ROOT). Compiles for one architecture to stay cheap."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hpcm.plugins.biwkv import CONTRACT
from tests.cuda_emulation import find_nvcc

PLUGINS_DIR = Path(__file__).resolve().parents[1] / "plugins"
SKIP_MESSAGE = "skipping TensorRT plugin: set -DTENSORRT_ROOT=... (headers of NVIDIA/TensorRT include/)"


NVCC = find_nvcc()
CMAKE = shutil.which("cmake")
needs_toolchain = pytest.mark.skipif(
    NVCC is None or CMAKE is None,
    reason=f"needs cmake and nvcc (cmake: {CMAKE}, nvcc: {NVCC}; set CUDA_HOME or put nvcc on PATH)",
)


def _run(args: list[str]) -> subprocess.CompletedProcess:
    # TENSORRT_ROOT is read from the command line only; drop it so the environment cannot leak in.
    env = {key: value for key, value in os.environ.items() if key != "TENSORRT_ROOT"}
    return subprocess.run(args, capture_output=True, text=True, env=env, check=False)


def _configure(build_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return _run(
        [
            CMAKE,
            "-S",
            str(PLUGINS_DIR),
            "-B",
            str(build_dir),
            f"-DCMAKE_CUDA_COMPILER={NVCC}",
            "-DCMAKE_CUDA_ARCHITECTURES=90",
            *extra,
        ]
    )


def _build(build_dir: Path, *targets: str) -> subprocess.CompletedProcess:
    target_args = [arg for target in targets for arg in ("--target", target)]
    return _run([CMAKE, "--build", str(build_dir), "-j", str(min(os.cpu_count() or 1, 4)), *target_args])


def _assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
@needs_toolchain
def test_kernel_builds_and_plugin_is_skipped_without_tensorrt(tmp_path):
    configure = _configure(tmp_path)
    _assert_ok(configure)
    assert SKIP_MESSAGE in configure.stdout
    assert f"op_type={CONTRACT.op_type} version={CONTRACT.plugin_version} namespace={CONTRACT.plugin_namespace}" in (
        configure.stdout
    )
    build = _build(tmp_path)
    _assert_ok(build)
    assert (tmp_path / "libhpcm_biwkv_kernel.a").is_file()
    assert (tmp_path / "biwkv_kernel_test").is_file()
    assert not list(tmp_path.glob("libhpcm_biwkv_trt_plugin*"))


@pytest.mark.slow
@needs_toolchain
def test_wrong_tensorrt_root_fails_clearly(tmp_path):
    configure = _configure(tmp_path / "build", f"-DTENSORRT_ROOT={tmp_path / 'not-tensorrt'}")
    assert configure.returncode != 0
    # CMake wraps long messages; compare with whitespace collapsed.
    assert "TensorRT headers not found" in " ".join(configure.stderr.split())


@pytest.mark.slow
@needs_toolchain
@pytest.mark.skipif(
    not os.environ.get("TENSORRT_ROOT"),
    reason="set TENSORRT_ROOT to a directory whose include/ holds the TensorRT headers (NVIDIA/TensorRT include/)",
)
def test_plugin_builds_against_tensorrt_headers(tmp_path):
    configure = _configure(tmp_path, f"-DTENSORRT_ROOT={os.environ['TENSORRT_ROOT']}")
    _assert_ok(configure)
    assert SKIP_MESSAGE not in configure.stdout
    build = _build(tmp_path, "hpcm_biwkv_trt_plugin")
    _assert_ok(build)
    assert "warning" not in (build.stdout + build.stderr).lower()
    library = tmp_path / "libhpcm_biwkv_trt_plugin.so"
    assert library.is_file()

    nm = shutil.which("nm")
    if nm:
        exported = _run([nm, "-D", "--defined-only", str(library)]).stdout.split()
        assert "getCreators" in exported and "setLoggerFinder" in exported
    readelf = shutil.which("readelf")
    if readelf:
        # Loaded through IPluginRegistry::loadLibrary, the plugin must not pull libnvinfer itself.
        assert "libnvinfer" not in _run([readelf, "-d", str(library)]).stdout
