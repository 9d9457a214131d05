#!/usr/bin/env bash
# Nsight Compute profile of the Bi-WKV kernel's three passes (tile summary, tile prefix, output) at
# one shape (default B=1, C=640, T=34560 float32, the shape of the kernel's speed target):
# duration, throughput against the chip's peaks, occupancy, launch shape and warp stall reasons.
# Needs a GPU machine where ncu can read the counters (not gVisor). Output: the terminal and, when
# $OUT is set, $OUT/ncu_biwkv.txt.
#
#   scripts/profile_biwkv.sh [B C T DTYPE]
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
NCU="${NCU:-$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)}"
B="${1:-1}" C="${2:-640}" T="${3:-34560}" DTYPE="${4:-float32}"
LOG_DIR="${OUT:-$ROOT/build/profile_biwkv}"
mkdir -p "$LOG_DIR"
if [ -z "$NCU" ]; then
    echo "ncu (Nsight Compute) not found: set NCU to its path"
    exit 1
fi
# Skip the warm-up launches, then one launch of each pass; the clocks stay as the driver sets them.
"$NCU" --clock-control none --kernel-name regex:'tileSummaryKernel|tilePrefixKernel|outputKernel' \
    --launch-skip 30 --launch-count 3 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
    "$PYTHON" scripts/bench_biwkv.py --B "$B" --C "$C" --T "$T" --dtype "$DTYPE" --iters 20 --warmup 20 \
    --eager-iters 1 2>&1 | tee "$LOG_DIR/ncu_biwkv.txt"
