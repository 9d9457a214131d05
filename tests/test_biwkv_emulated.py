"""The Bi-WKV CUDA kernel's GPU self-test and the TensorRT plugin, run without a GPU or TensorRT.

The unchanged kernel source and ``biwkv_kernel_test.cpp`` are compiled for the CPU against the SIMT
emulation in ``tests/cuda_emulation`` (one std::thread per CUDA thread, real barriers and warp
shuffles), so the tiling, the block and warp scans, the multi-tile prefix pass, the float16 path and
the vrwkv mode's segmented scan are checked against the self-test's float64 references in CI.
AddressSanitizer stands in for
compute-sanitizer's memcheck, ThreadSanitizer for its racecheck; the mutation tests show that each
of them catches the bug it is here for. With TensorRT's headers (env TENSORRT_ROOT), the plugin is
compiled too and driven as TensorRT drives it, down to enqueue on the emulated kernel. Float rounding of the GPU's own expf and the kernel's speed
still need the GPU run (scripts/gpu_check.sh)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hpcm.plugins.biwkv import CONTRACT
from tests.cuda_emulation import (KERNEL_SOURCE, build_plugin_harness, build_self_test, cuda_include_dir,
                                   rewrite_launches)

COMPILER = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
needs_toolchain = pytest.mark.skipif(
    COMPILER is None or cuda_include_dir() is None,
    reason=f"needs a C++20 compiler and the CUDA toolkit headers (compiler: {COMPILER}, "
    f"CUDA include: {cuda_include_dir()}; set CUDA_HOME or put nvcc on PATH)",
)
RUN_TIMEOUT_S = 900


def _run(executable: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(executable), *args], capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                          env={**os.environ, **(env or {})}, check=False)


def _assert_all_passed(result: subprocess.CompletedProcess) -> None:
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert "ALL PASSED" in result.stdout, report
    assert "FAIL" not in result.stdout, report
    # Argument checks, 18 shapes per mode and a CUDA-graph replay per mode.
    assert result.stdout.count("PASS ") == 39, report
    for mode in CONTRACT.modes:
        assert result.stdout.count(f"PASS {mode} ") == 19, (mode, report)


def _mutated_kernel(original: str, replacement: str, after: str | None = None) -> str:
    """The kernel source with the first ``original`` (after the first ``after``) replaced."""
    start = KERNEL_SOURCE.read_text()
    offset = start.index(after) if after is not None else 0
    position = start.index(original, offset)
    return start[:position] + replacement + start[position + len(original):]


def test_launch_rewrite_keeps_the_arguments_and_refuses_leftovers():
    assert rewrite_launches("k<<<g, b, 0, s>>>(x, y);") == "::simt::launch(g, b, 0, s, k, x, y);"
    assert rewrite_launches("outputKernel<Elem>\n    <<<blocks, t, 0, s>>>(w, u);") == (
        "::simt::launch(blocks, t, 0, s, outputKernel<Elem>, w, u);"
    )
    with pytest.raises(ValueError, match="remain"):
        rewrite_launches("(pick())<<<1, 32>>>(x);")
    assert rewrite_launches(KERNEL_SOURCE.read_text()).count("::simt::launch(") == 3


@pytest.mark.slow
@needs_toolchain
def test_self_test_passes_under_address_sanitizer(tmp_path):
    _assert_all_passed(_run(build_self_test(tmp_path, "address"), "--quick"))


@pytest.mark.slow
@needs_toolchain
def test_self_test_passes_under_thread_sanitizer(tmp_path):
    _assert_all_passed(_run(build_self_test(tmp_path, "thread"), "--quick"))


@pytest.mark.slow
@needs_toolchain
def test_address_sanitizer_reports_a_read_past_the_row(tmp_path):
    # Drops loadRun's bound check, so the last tile of the last row reads beyond k.
    unguarded = _mutated_kernel("if (t < tokens)", "if (t >= 0)")
    result = _run(build_self_test(tmp_path, "address", unguarded), "--quick")
    assert result.returncode != 0
    # Past k's end lies a redzone (heap-buffer-overflow) or, depending on the heap's layout, a block
    # another thread just freed (heap-use-after-free); either way the report must point at loadRun.
    summary = next((line for line in result.stderr.splitlines() if line.startswith("SUMMARY: AddressSanitizer")), "")
    assert re.search(r"heap-(buffer-overflow|use-after-free) .* in loadRun", summary), result.stderr[-4000:]


@pytest.mark.slow
@needs_toolchain
def test_thread_sanitizer_reports_a_missing_barrier(tmp_path):
    # Drops the barrier between writing the outputs to shared memory and reading them back.
    racy = _mutated_kernel("__syncthreads();", "", after="sh.k[padded(first + j)] = out[j];")
    result = _run(build_self_test(tmp_path, "thread", racy), "--quick", env={"TSAN_OPTIONS": "halt_on_error=1"})
    assert result.returncode != 0
    assert "ThreadSanitizer: data race" in result.stderr, result.stderr[-4000:]
    assert "outputKernel" in result.stderr


@needs_toolchain
@pytest.mark.skipif(not os.environ.get("TENSORRT_ROOT"),
                    reason="set TENSORRT_ROOT to a directory whose include/ holds the TensorRT headers (NVIDIA/TensorRT include/)")
def test_tensorrt_plugin_runs_on_the_emulated_kernel(tmp_path):
    harness = build_plugin_harness(tmp_path, Path(os.environ["TENSORRT_ROOT"]) / "include",
                                   CONTRACT.compile_definitions())
    result = _run(harness, CONTRACT.op_type, CONTRACT.plugin_version, CONTRACT.plugin_namespace,
                  *CONTRACT.earlier_plugin_versions)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert "ALL PASSED" in result.stdout and "FAIL" not in result.stdout, report
    # Both modes at two shapes in float32 and float16 (the vrwkv plugin rebuilt from its serialised
    # field), and each earlier version's plugin once.
    assert result.stdout.count("PASS enqueue vrwkv ") == 4, report
    assert result.stdout.count("PASS enqueue exact ") == 4 + len(CONTRACT.earlier_plugin_versions), report
    assert "serialises its mode: mode=vrwkv" in result.stdout, report
