"""What the Bi-WKV of the fork's CUDA kernel (mode vrwkv) changes in a phaseN model, against float32 noise.

    python scripts/measure_vrwkv.py [--image ../shared/data/kodak/kodim01.png] [--phases 1 2 3 4] [--eps]

For each phase, one seeded model (the golden streams' recipe: untrained weights with the last layers of
g_a and h_s scaled by --gain, so that y holds real symbols and scales spread over the buckets) runs the
image in four ways: phaseN in float32 (the reference), phaseN in float64 (the yardstick: what float32
rounding alone changes), phaseN-vrwkv with the same weights (the kernel's formula), and with --eps
phaseN-vrwkv through the float64 recurrences of the kernel including its 1e-6 denominator term (slow).
Against the reference it prints the largest and mean change of the y likelihoods, the scale-bucket
flips over all coded symbols (one flip desynchronises a stream decoded the other way), how many coded
integers round(y - means) differ, and the estimated bpp (plus the real stream size for the float32 runs).
Trained weights may be more or less sensitive than seeded ones.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from hpcm.codec.images import load_image
from hpcm.config import default_image_folder
from hpcm.models import build_model
from hpcm.models.cdf_tables import default_scale_table, scale_indexes
from hpcm.models.cells import SpatialMix
from hpcm.models.hpcm import HPCM
from hpcm.plugins.biwkv import WKV_MODES
from hpcm.plugins.biwkv.reference import biwkv_vrwkv_scan
from hpcm.runtime.session import eager_codec

KERNEL_EPS = 1e-6  # the kernel's denominator term (EPS in biwkv4_cuda_new.cu)


@dataclass
class Run:
    likelihood_y: torch.Tensor
    indexes: list[torch.Tensor]  # per step, the scale bucket of each coded symbol
    symbols: list[torch.Tensor]  # per step, the coded integers round(y - means)
    bpp: float
    stream_bpp: float = math.nan


def gained(model: HPCM, gain: float) -> HPCM:
    with torch.no_grad():
        for transform in (model.g_a, model.h_s):
            last = [m for m in transform.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))][-1]
            last.weight.mul_(gain)
            last.bias.mul_(gain)
    return model.eval()


def run(model: HPCM, x: torch.Tensor, stream: bool) -> Run:
    """Eval forward through the progressive schedule, keeping each step's scale buckets."""
    table = default_scale_table()
    x = x.to(next(model.parameters()).dtype)
    indexes, symbols, likelihoods = [], [], []
    with torch.no_grad():
        y = model.g_a(x)
        z = model.h_a(y)
        z_q = torch.round(z - model.means_hyper)
        bits_z = -torch.log2(model.entropy_estimation(z_q, model.scales_hyper)).sum()
        schedule = model.schedule
        y_scales = schedule.all_scales(y)

        def code_step(step: int, scales: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
            q = torch.round(schedule.symbols(y_scales, step) - means)
            indexes.append(scale_indexes(scales.float(), table))
            symbols.append(q.float())
            likelihood = model.entropy_estimation(q, scales)
            likelihoods.append(likelihood)
            return q

        schedule.run(model.h_s(z_q + model.means_hyper), code_step)
    pixels = x.shape[-2] * x.shape[-1]
    bits_y = sum(-torch.log2(t).sum() for t in likelihoods)
    result = Run(torch.cat([t.flatten() for t in likelihoods]).float(), indexes, symbols,
                 float(bits_y + bits_z) / pixels)
    if stream:
        model.update()
        result.stream_bpp = 8 * len(eager_codec(model).compress(x.float()).data) / pixels
    return result


def with_kernel_eps(model: HPCM) -> HPCM:
    """``model`` whose spatial mixes run the kernel's float64 recurrences with its EPS term: set as the
    form they compute in place of the op (their closed form), since no implementation of the op has EPS."""
    with_eps = replace(WKV_MODES["vrwkv"], name="vrwkv+eps", doc="vrwkv with EPS",
                       closed_form=lambda w, u, k, v: biwkv_vrwkv_scan(w, u, k, v, KERNEL_EPS).to(k.dtype))
    for module in model.modules():
        if isinstance(module, SpatialMix):
            module.mode = with_eps
            module.wkv_form = "closed_form"
    return model


def report(name: str, reference: Run, other: Run) -> None:
    change = (other.likelihood_y - reference.likelihood_y).abs()
    flips = sum(int((a != b).sum()) for a, b in zip(reference.indexes, other.indexes))
    symbols = sum(a.numel() for a in reference.indexes)
    changed = sum(int((a != b).sum()) for a, b in zip(reference.symbols, other.symbols))
    stream = f", stream {other.stream_bpp:.5f} bpp" if not math.isnan(other.stream_bpp) else ""
    print(f"  {name:<22} max |d likelihood_y| {change.max():.3e}, mean {change.mean():.3e}; "
          f"bucket flips {flips} of {symbols:,}; coded integers changed {changed}; "
          f"{other.bpp:.5f} bpp (estimated){stream}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, default=default_image_folder() / "kodim01.png")
    parser.add_argument("--phases", type=int, nargs="+", default=[1, 2, 3, 4], choices=[1, 2, 3, 4])
    parser.add_argument("--gain", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eps", action="store_true", help="also run the kernel's recurrences with its EPS (slow)")
    args = parser.parse_args()

    x = load_image(args.image)
    print(f"{args.image.name}: {x.shape[-1]}x{x.shape[-2]}, seed {args.seed}, gain {args.gain}")
    for phase in args.phases:
        start = time.perf_counter()
        exact = gained(build_model(f"phase{phase}", seed=args.seed), args.gain)
        vrwkv = build_model(f"phase{phase}-vrwkv").eval()
        vrwkv.load_state_dict(exact.state_dict())
        reference = run(exact, x, stream=True)
        print(f"phase{phase}: float32 exact {reference.bpp:.5f} bpp (estimated), stream {reference.stream_bpp:.5f} bpp")
        report("float64 exact (noise)", reference, run(copy.deepcopy(exact).double(), x, stream=False))
        kernel = run(vrwkv, x, stream=True)
        report("float32 vrwkv", reference, kernel)
        if args.eps:
            with_eps = run(with_kernel_eps(vrwkv), x, stream=False)
            report("float64 vrwkv + EPS", reference, with_eps)
            report("  the same vs float32 vrwkv", kernel, with_eps)
        print(f"  ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
