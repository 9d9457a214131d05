"""Why an fp16 whole-forward export differs from float32: rounding decisions near .5, or arithmetic.

    python scripts/measure_fp16_forward.py [--variants phase2 phase2-preln] [--size 256 256] [--blocks-float32]

For each variant (seeded weights, the export's sample image of that size) it runs the copies the fp16
export traces, float32 and float16, and prints: how many float32 residuals y - means lie within 5e-3
of a .5 boundary, how many of the rounding decisions (z and every step's y) the float16 copy takes
otherwise, the largest change of the means with float32's decisions, and the relative error of x_hat
(to its range) with float16's own decisions and with float32's (the manifest's figure), plus the y
likelihoods' with float32's. --blocks-float32 repeats the float16 runs with every RWKV block computing
in float32: decisions that still differ are not caused by those blocks' precision.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from hpcm.export.precision import reduced_precision_forward_error
from hpcm.export.tracing import graph_specs, traced_copy
from hpcm.models import build_model
from hpcm.models.cells import RWKVBlock
from hpcm.models.hpcm import HPCM

BOUNDARY_DISTANCE = 5e-3


class InFloat32(nn.Module):
    """``inner`` computed in float32 inside a float16 network."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.float()).to(x.dtype)


def with_blocks_in_float32(model: HPCM) -> HPCM:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, RWKVBlock):
                setattr(parent, name, InFloat32(child))
    return model


def residuals_and_means(model: HPCM, x: torch.Tensor, rounding) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """Every step's y - means and means, flattened, with ``rounding``'s decisions (a Rounding)."""
    residuals, means_seen = [], []
    with torch.no_grad():
        y = model.g_a(x)
        z_hat = rounding.z.to(y.dtype) + model.means_hyper
        schedule = model.schedule
        y_scales = schedule.all_scales(y)

        def code_step(step: int, scales: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
            residuals.append((schedule.symbols(y_scales, step) - means).float().flatten())
            means_seen.append(means.float().flatten())
            return rounding.y[step].to(means.dtype)

        schedule.run(model.h_s(z_hat), code_step)
    return torch.cat(residuals), torch.cat(means_seen)


def measure(variant: str, size: tuple[int, int], blocks_float32: bool) -> None:
    model = build_model(variant, seed=0).eval()
    reference = traced_copy(model, "custom")
    reduced = traced_copy(model, "custom", torch.float16)
    if blocks_float32:
        reduced = with_blocks_in_float32(reduced)
    (spec,) = graph_specs(reference, size, names=["forward"])
    x = spec.inputs["x"]
    with torch.no_grad():
        expected = reference(x, training=False)
        own = reduced(x.half(), training=False)
    errors, rounding = reduced_precision_forward_error(reference, reduced, x, torch.float16)
    residuals, means = residuals_and_means(reference, x, expected["rounding"])
    _, means16 = residuals_and_means(reduced, x.half(), expected["rounding"])
    near = int(((residuals.abs() - 0.5).abs() < BOUNDARY_DISTANCE).sum())
    scale = float(expected["x_hat"].abs().max())
    own_error = float((own["x_hat"].float() - expected["x_hat"]).abs().max()) / scale
    print(f"{variant} {size[0]}x{size[1]}{' (RWKV blocks in float32)' if blocks_float32 else ''}: "
          f"{near} of {residuals.numel():,} float32 residuals within {BOUNDARY_DISTANCE:g} of .5 "
          f"(max |means| {float(means.abs().max()):.2f}); {rounding['differing']} of {rounding['decisions']:,} "
          f"decisions differ; means move by up to {float((means16 - means).abs().max()):.1e}")
    print(f"  x_hat relative error: {own_error:.2e} with float16's decisions, {errors['x_hat']['relative']:.2e} "
          f"with float32's; y likelihoods {errors['y_likelihoods']['relative']:.2e} with float32's")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["phase2", "phase2-preln"])
    parser.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"))
    parser.add_argument("--blocks-float32", action="store_true", help="also run with every RWKV block in float32")
    args = parser.parse_args()
    for variant in args.variants:
        measure(variant, tuple(args.size), blocks_float32=False)
        if args.blocks_float32:
            measure(variant, tuple(args.size), blocks_float32=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
