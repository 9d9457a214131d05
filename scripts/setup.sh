#!/usr/bin/env bash
# Set up a virtual environment (CPU PyTorch on a CPU machine) and run the main job on the built-in
# default: the phase2 model, its size report, and an encode/decode of a Kodak image (or a synthetic
# one) with seeded, untrained weights.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -d .venv ] || "$PYTHON" -m venv .venv
# torch first and pinned: a bare `torch` requirement would pull multi-GB CUDA wheels on a CPU machine.
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[test]'
.venv/bin/hpcm info --variant phase2
if .venv/bin/hpcm --help | grep -q '^  encode'; then
  mkdir -p out
  image=../shared/data/kodak/kodim23.png
  if [ ! -f "$image" ]; then
    image=out/synthetic.png
    .venv/bin/python -c "import numpy as n; from PIL import Image; Image.fromarray(n.random.default_rng(0).integers(0,256,(256,384,3),dtype=n.uint8)).save('$image')"
  fi
  .venv/bin/hpcm encode "$image" -o out/default.hpcm --variant phase2
  .venv/bin/hpcm decode out/default.hpcm -o out/default.png
fi
