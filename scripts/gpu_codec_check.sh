#!/usr/bin/env bash
# The codec on one GPU, after scripts/gpu_check.sh has built the Bi-WKV kernel: eager PyTorch (float32,
# TF32 off, the RWKV cells through the CUDA kernel) for baseline and phase2 with seeded weights.
#   1. hpcm bench at 768x512, 1920x1080 and 3840x2160: encode/decode latency per stage (CUDA events,
#      median and p90 of 10 after warm-up) and the CUDA allocator's peak, in a fresh process each.
#   2. Streams across devices: kodim01 encoded on the GPU and decoded on the CPU, and the reverse; each decoded PNG must equal the one decoded on the encoding device.
#   3. hpcm mismatch between the GPU and the CPU: raw scale-bucket flips per step for kodim01 and
#      its 1920x1080 and 3840x2160 enlargements.
# Meant to finish within 5 minutes on an H100/H200 with 16 cores. Output goes to the terminal and, when
# $OUT is set, to $OUT/gpu_codec_check.log beside the JSON and Markdown reports.
#
#   scripts/gpu_codec_check.sh [KODAK_DIR]     # folder holding kodim01.png (default ../shared/data/kodak)
#   VARIANTS=phase2 scripts/gpu_codec_check.sh # steps 2 and 3 for these variants only (default: both)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
KODAK="$(cd "${1:-$ROOT/../shared/data/kodak}" && pwd)"
LOG_DIR="${OUT:-$ROOT/build/gpu_codec_check}"
VARIANTS="${VARIANTS:-baseline phase2}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$LOG_DIR"
exec > >(tee "$LOG_DIR/gpu_codec_check.log") 2>&1

hpcm=("$PYTHON" -c 'import sys; sys.argv[0] = "hpcm"; from hpcm.cli import main; main()')
# A 3840x2160 image pads to 8.4 M pixels, above the default per-image limit that guards against hostile input.
export HPCM_MAX_PIXELS=9000000
source "$ROOT/scripts/steps.sh"

# Larger test images from kodim01 (Lanczos up, centre crop): photo content at each size.
make_images() {
    "$PYTHON" - "$KODAK/kodim01.png" "$WORK/images" <<'EOF'
import sys
from pathlib import Path
from PIL import Image

source, folder = Image.open(sys.argv[1]).convert("RGB"), Path(sys.argv[2])
folder.mkdir(parents=True)
source.save(folder / "kodim01.png")
for width, height in ((1920, 1080), (3840, 2160)):
    scale = max(width / source.width, height / source.height)
    big = source.resize((round(source.width * scale), round(source.height * scale)), Image.LANCZOS)
    left, top = (big.width - width) // 2, (big.height - height) // 2
    big.crop((left, top, left + width, top + height)).save(folder / f"kodim01_{width}x{height}.png")
print(*sorted(p.name for p in folder.iterdir()))
EOF
}

bench() {
    local name="$1" seconds="$2" repeats="$3" warmup="$4"
    shift 4
    timeout "$seconds" "${hpcm[@]}" bench -v baseline,phase2 --device cuda --repeats "$repeats" --warmup "$warmup" \
        --no-macs --compare baseline -o "$LOG_DIR/$name.json" "$@" && cat "$LOG_DIR/$name.md"
}

# Encode on one device, decode on both; the two decoded images must be identical.
cross_device() {
    local variant="$1" image="$2" from="$3" other="$4"
    local stem="$WORK/${variant}_$(basename "$image" .png)_$from"
    "${hpcm[@]}" encode "$image" -v "$variant" --device "$from" -o "$stem.hpcm" &&
        "${hpcm[@]}" decode "$stem.hpcm" --device "$from" -o "$stem.$from.png" --reference "$image" &&
        "${hpcm[@]}" decode "$stem.hpcm" --device "$other" -o "$stem.$other.png" &&
        cmp "$stem.$from.png" "$stem.$other.png" && echo "$variant $(basename "$image") $from -> $other: identical"
}

# Scale-bucket flips per image of the second backend against the first, summed over the steps.
mismatch() {
    local variant="$1"
    timeout 120 "${hpcm[@]}" mismatch -v "$variant" --images "$WORK/images" --limit 3 \
        --backends cuda-float32,cpu-float32 -o "$LOG_DIR/mismatch_$variant.json" &&
        "$PYTHON" - "$LOG_DIR/mismatch_$variant.json" "$variant" <<'EOF'
import json
import sys

report = json.load(open(sys.argv[1]))
for image in report["images"]:
    for backend, steps in image["steps"].items():
        counts = [sum(s[key] for s in steps) for key in ("symbols", "mismatches", "unguarded_mismatches")]
        print(f"{sys.argv[2]} {image['image']} {backend} vs {report['reference']}: {counts[1]} bucket flips "
              f"({counts[2]} outside the guard) of {counts[0]} symbols")
EOF
}

step "images" make_images
step "bench 768x512 1920x1080" bench bench_gpu 120 10 2 --size 768x512,1920x1080
for variant in $VARIANTS; do
    step "stream $variant kodim01 cuda->cpu" cross_device "$variant" "$WORK/images/kodim01.png" cuda cpu
    step "stream $variant kodim01 cpu->cuda" cross_device "$variant" "$WORK/images/kodim01.png" cpu cuda
done
step "bench 3840x2160" bench bench_gpu_4k 150 10 1 --size 3840x2160
for variant in $VARIANTS; do
    step "mismatch $variant" mismatch "$variant"
done

echo
if ((${#failures[@]})); then
    echo "GPU CODEC CHECK FAILED: ${failures[*]} ($SECONDS s)"
    exit 1
fi
echo "GPU CODEC CHECK PASSED ($SECONDS s)"
