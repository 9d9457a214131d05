"""What must be the same bits on every x86-64 CPU: a seeded model's weights and any model's entropy
tables. Both were once computed with float kernels that ATen compiles per vector unit, whose last bits
differ (seeded weights under the default build, y tables under AVX-512), so streams of the seeded
model or of a checkpoint without stored tables did not decode on another machine. A subprocess with
ATen's default (no SIMD) kernels and one thread computes both again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from hpcm.codec.codec import weights_digest
from hpcm.codec.tables import EntropyTables
from hpcm.models import build_model


def seeded_digests() -> str:
    """Weights and tables digests of a seeded phase2 whose z scales spread as a trained model's do
    (float32-exact values, so the z tables are not all one row)."""
    model = build_model("phase2", seed=3)
    with torch.no_grad():
        model.scales_hyper.copy_(torch.tensor([0.05, 0.3125, 1.0, 7.5]).repeat(64).reshape(model.scales_hyper.shape))
    model.update()
    return f"{weights_digest(model).hex()} {EntropyTables.from_model(model).digest.hex()}"


def test_seeded_weights_and_tables_do_not_depend_on_the_vector_unit_or_threads() -> None:
    code = ("import torch; torch.set_num_threads(1); from tests.test_portability import seeded_digests; "
            "print(seeded_digests())")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"}
    there = subprocess.run([sys.executable, "-c", code], env=env, cwd=Path(__file__).resolve().parents[1],
                           capture_output=True, text=True, check=True)
    assert there.stdout.strip() == seeded_digests()
