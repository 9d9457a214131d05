#!/usr/bin/env bash
# Set up a virtual environment (CPU PyTorch on a CPU machine) and run the main job on the built-in
# default: export the phase2 codec graphs to ONNX (seeded, untrained weights), check them on ONNX
# Runtime against eager PyTorch on a Kodak image, and encode/decode that image.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -d .venv ] || "$PYTHON" -m venv .venv
# torch first and pinned: a bare `torch` requirement would pull multi-GB CUDA wheels on a CPU machine.
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[test]'
.venv/bin/hpcm info --variant phase2
# The codec's graphs (the default; about 80 s on 2 CPU cores).
.venv/bin/hpcm-export --variant phase2 -o out/phase2
.venv/bin/hpcm check out/phase2 --limit 1 --report out/phase2/check.json
mkdir -p out
image=../shared/data/kodak/kodim23.png
if [ ! -f "$image" ]; then
  image=out/synthetic.png
  .venv/bin/python -c "import numpy as n; from PIL import Image; Image.fromarray(n.random.default_rng(0).integers(0,256,(256,384,3),dtype=n.uint8)).save('$image')"
fi
# the codec from the export folder alone (ONNX Runtime), and its stream decoded by eager PyTorch
.venv/bin/hpcm encode "$image" -o out/default.hpcm --export out/phase2
.venv/bin/hpcm decode out/default.hpcm -o out/default.png
