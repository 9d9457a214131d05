#!/usr/bin/env bash
# The README's first command: set up a virtual environment (CPU PyTorch on a CPU machine) and run the
# main job on the built-in default: export the phase2 codec's graphs to ONNX (seeded, untrained
# weights), check them on ONNX Runtime against eager PyTorch, encode an image with the export and
# decode the stream with eager PyTorch. Works on a fresh clone, with or without ../shared (then a
# synthetic image is coded). .ci/run runs it before the tests, so it cannot break unnoticed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=out
[ -d .venv ] || "$PYTHON" -m venv .venv
# torch first and pinned: a bare `torch` requirement would pull multi-GB CUDA wheels on a CPU machine.
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[test]'
mkdir -p "$OUT"
.venv/bin/hpcm info --variant phase2
# The codec's graphs (about 80 s on 2 CPU cores).
.venv/bin/hpcm-export --variant phase2 -o "$OUT/phase2"
.venv/bin/hpcm check "$OUT/phase2" --limit 1 --report "$OUT/phase2/check.json"
image=../shared/data/kodak/kodim23.png
if [ ! -f "$image" ]; then
  image=$OUT/synthetic.png
  echo "../shared/data/kodak is not here: coding a smooth synthetic 256x256 image ($image) instead of kodim23"
  .venv/bin/python -c "from pathlib import Path; from hpcm.codec.images import save_png, synthetic_images
save_png(synthetic_images(1, 256)[0][1], Path('$image'))"
fi
# the codec from the export folder alone (ONNX Runtime), and its stream decoded by eager PyTorch
.venv/bin/hpcm encode "$image" -o "$OUT/default.hpcm" --export "$OUT/phase2"
.venv/bin/hpcm decode "$OUT/default.hpcm" -o "$OUT/default.png" --reference "$image"
cat <<EOF

Main job done. What it showed: phase2 exported to ONNX (one custom Bi-WKV node per WKV call), the
graphs matched eager PyTorch on ONNX Runtime, and a stream written from the export alone decoded with
eager PyTorch. The weights are seeded and untrained: the rate and PSNR printed above check the
plumbing, not compression quality (the decoded image is not a picture).
Outputs:
  $OUT/phase2/            export folder (manifest.json, graphs, weights.bin, codec.npz)
  $OUT/phase2/check.json  ONNX Runtime vs eager PyTorch report
  $OUT/default.hpcm       the stream of $image
  $OUT/default.png        its decoded image
EOF
