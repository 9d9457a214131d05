#!/usr/bin/env bash
# One-command check of the Bi-WKV CUDA kernel on a GPU machine: CMake build for the local GPU (the
# TensorRT plugin too when TENSORRT_ROOT names TensorRT's headers), the C++ self-test, the GPU pytest
# suite (the float64 grid and eager phase2 / phase2-vrwkv models on the GPU), compute-sanitizer memcheck
# and racecheck on the self-test, and the benchmark at B=1, C=640 against the DRAM floor and the
# vectorised PyTorch op, each in both Bi-WKV modes. Meant to finish within 10 minutes on an H100.
# Where TensorRT is importable and the plugin was built, it then exports phase2, builds its engines
# and runs `hpcm check` on TensorRT. Output goes to the terminal and, when $OUT is set, to $OUT/gpu_check.log (plus
# bench_biwkv.txt, torch_extension_build.log and, with TensorRT, check_tensorrt.json).
#
#   scripts/gpu_check.sh            # PYTHON=/path/to/python and NVCC=/path/to/nvcc override
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
BUILD="${BUILD:-$ROOT/build/gpu_check}"
LOG_DIR="${OUT:-$BUILD}"
mkdir -p "$LOG_DIR" "$BUILD"
exec > >(tee "$LOG_DIR/gpu_check.log") 2>&1

source "$ROOT/scripts/steps.sh"

# GPU machines are often offline and start without this package: install it in place, without
# dependencies or an index (torch, numpy, pytest are expected there already).
ensure_package() {
    "$PYTHON" -c "import hpcm.plugins.biwkv, hpcm.models" 2>/dev/null && return
    "$PYTHON" -m pip install -q --no-deps --no-build-isolation --no-index -e "$ROOT" &&
        "$PYTHON" -c "import hpcm.plugins.biwkv, hpcm.models"
}

step "package" ensure_package
step "gpu" nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
if ((${#failures[@]})); then
    echo "GPU CHECK FAILED: ${failures[*]} (nothing else can run without the package and a visible GPU)"
    exit 1
fi

# PyTorch's JIT build of the extension takes a minute or two; run it beside the CMake build so
# neither waits for the other, and so the pytest step's timeout covers tests only.
EXTENSION_LOG="$LOG_DIR/torch_extension_build.log"
MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PYTHON" -c \
    'from hpcm.plugins.biwkv.cuda import load_cuda_kernel; print(load_cuda_kernel().__file__)' \
    >"$EXTENSION_LOG" 2>&1 &
EXTENSION_PID=$!
wait_for_extension() {
    wait "$EXTENSION_PID"
    local status=$?
    cat "$EXTENSION_LOG"
    return "$status"
}

step "configure" cmake -S plugins -B "$BUILD" -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_CUDA_ARCHITECTURES=native \
    ${TENSORRT_ROOT:+-DTENSORRT_ROOT="$TENSORRT_ROOT"}
step "build" cmake --build "$BUILD" -j "$(nproc)"
step "kernel self-test" timeout 120 "$BUILD/biwkv_kernel_test"
step "torch extension" wait_for_extension
step "pytest -m gpu" timeout 600 "$PYTHON" -m pytest -m gpu -q -rs tests/test_biwkv_cuda.py

# nvcc may be a wrapper script outside the toolkit, so look in the usual toolkit places too.
find_sanitizer() {
    command -v compute-sanitizer && return
    local candidate
    for candidate in "$(dirname "$(readlink -f "$NVCC")")/compute-sanitizer" "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" \
        "${CUDA_HOME:-/usr/local/cuda}/compute-sanitizer/compute-sanitizer"; do
        [ -x "$candidate" ] && echo "$candidate" && return
    done
    echo compute-sanitizer
}
SANITIZER="$(find_sanitizer)"
step "memcheck" timeout 180 "$SANITIZER" --tool memcheck --error-exitcode 3 "$BUILD/biwkv_kernel_test" --quick
step "racecheck" timeout 180 "$SANITIZER" --tool racecheck --error-exitcode 3 "$BUILD/biwkv_kernel_test" --quick

step "benchmark" bash -o pipefail -c 'timeout 480 "$0" scripts/bench_biwkv.py --B 1 --C 640 --T 1536 12288 34560 \
    --dtype float32 float16 | tee "$1"' "$PYTHON" "$LOG_DIR/bench_biwkv.txt"

# TensorRT: engines of a phase2 codec export (no forward graph: the codec does not use it) built with
# the plugin from the CMake build above, then `hpcm check` on them against eager PyTorch.
tensorrt_checks() {
    local plugin="$BUILD/libhpcm_biwkv_trt_plugin.so" export_dir="$BUILD/export_phase2"
    # The entry points, without relying on the console scripts being on PATH.
    local hpcm=("$PYTHON" -c 'from hpcm.cli import main; main()')
    local hpcm_export=("$PYTHON" -c 'from hpcm.cli.export_cmds import export_main; export_main()')
    export HPCM_BIWKV_PLUGIN="$plugin" HPCM_ENGINE_CACHE="$BUILD/engines"
    step "pytest -m tensorrt" timeout 300 "$PYTHON" -m pytest -m tensorrt -q -rs tests/test_tensorrt_runner.py tests/test_runners.py
    step "export phase2" timeout 300 "${hpcm_export[@]}" --variant phase2 -o "$export_dir" \
        --opt-size 256 256 --min-size 128 128 --max-size 768 768
    step "hpcm build" timeout 600 "${hpcm[@]}" build "$export_dir"
    step "hpcm check tensorrt" timeout 300 "${hpcm[@]}" check "$export_dir" --backend tensorrt --limit 1 \
        --crop 256 --report "$LOG_DIR/check_tensorrt.json"
}

echo
if ! "$PYTHON" -c "import tensorrt" 2>/dev/null; then
    echo "TensorRT python not importable: engine build and hpcm check on TensorRT not run"
elif [ ! -f "$BUILD/libhpcm_biwkv_trt_plugin.so" ]; then
    echo "TensorRT $("$PYTHON" -c 'import tensorrt; print(tensorrt.__version__)') is importable, but the plugin was" \
        "not built: set TENSORRT_ROOT to a folder whose include/ holds NvInfer.h and rerun"
else
    tensorrt_checks
fi

echo
if ((${#failures[@]})); then
    echo "GPU CHECK FAILED: ${failures[*]} ($SECONDS s)"
    exit 1
fi
echo "GPU CHECK PASSED ($SECONDS s)"
