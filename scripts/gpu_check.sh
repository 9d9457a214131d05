#!/usr/bin/env bash
# One-command check of the Bi-WKV CUDA kernel on a GPU machine (meant to finish within 8 minutes on an H100):
# CMake build for the local GPU, the C++ self-test, the GPU pytest suite, compute-sanitizer on the
# self-test, the benchmark at B=1, C=640, and a note on TensorRT. Output goes to the terminal and,
# when $OUT is set, to $OUT/gpu_check.log (plus the benchmark table in $OUT/bench_biwkv.txt).
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

failures=()
step() {
    local name="$1"
    shift
    echo
    echo "=== $name: $*"
    local start=$SECONDS
    if "$@"; then
        echo "=== $name: ok ($((SECONDS - start)) s)"
    else
        echo "=== $name: FAILED with status $? ($((SECONDS - start)) s)"
        failures+=("$name")
    fi
}

# GPU machines are often offline and start without this package: install it in place, without
# dependencies or an index (torch, numpy, pytest are expected there already).
ensure_package() {
    "$PYTHON" -c "import hpcm.plugins.biwkv, hpcm.models" 2>/dev/null && return
    "$PYTHON" -m pip install -q --no-deps --no-build-isolation --no-index -e "$ROOT" &&
        "$PYTHON" -c "import hpcm.plugins.biwkv, hpcm.models"
}

step "package" ensure_package
step "gpu" nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
step "configure" cmake -S plugins -B "$BUILD" -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_CUDA_ARCHITECTURES=native \
    ${TENSORRT_ROOT:+-DTENSORRT_ROOT="$TENSORRT_ROOT"}
step "build" cmake --build "$BUILD" -j "$(nproc)"
step "kernel self-test" timeout 120 "$BUILD/biwkv_kernel_test"
step "pytest -m gpu" timeout 300 "$PYTHON" -m pytest -m gpu -q -rs tests/test_biwkv_cuda.py

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

step "benchmark" bash -o pipefail -c 'timeout 240 "$0" scripts/bench_biwkv.py --B 1 --C 640 --T 1536 12288 34560 \
    --dtype float32 float16 | tee "$1"' "$PYTHON" "$LOG_DIR/bench_biwkv.txt"

echo
if "$PYTHON" -c "import tensorrt" 2>/dev/null; then
    echo "TensorRT python importable: $("$PYTHON" -c 'import tensorrt; print(tensorrt.__version__)')" \
        "(plugin built only when TENSORRT_ROOT points at its headers)"
else
    echo "TensorRT python not importable: plugin engine checks not run"
fi

echo
if ((${#failures[@]})); then
    echo "GPU CHECK FAILED: ${failures[*]}"
    exit 1
fi
echo "GPU CHECK PASSED"
