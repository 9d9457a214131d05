"""Latency of exported graphs on ONNX Runtime (CPU by default) against eager PyTorch, same machine.

    python scripts/bench_onnxruntime.py EXPORT_DIR [--checkpoint C] [--size 512 768] [--runs 5]

Needs an export with the whole-model forward graph (``hpcm-export --forward``). Prints median / min /
max wall time per call (host arrays in and out, as a CPU codec sees them) for the ONNX Runtime
session and for the eager model on the same input (the checkpoint, or the export's seeded model),
plus the thread count.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch


def timed(fn, runs: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--checkpoint", type=Path, help="the weights the export was made from (trained exports)")
    parser.add_argument("--size", type=int, nargs=2, default=(512, 768), metavar=("H", "W"))
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    from hpcm.export.artifact import ExportDir
    from hpcm.models import build_model
    from hpcm.models.checkpoint import load_checkpoint
    from hpcm.runtime.runners.onnxruntime import OnnxRuntimeRunner

    export = ExportDir.open(args.export_dir)
    if "forward" not in export.graphs:
        raise SystemExit(f"{args.export_dir} has no forward graph: export with hpcm-export --forward")
    if args.checkpoint is None and export.manifest.seed is None:
        raise SystemExit("the export holds trained weights: pass --checkpoint")
    model = (load_checkpoint(args.checkpoint) if args.checkpoint
             else build_model(export.variant, seed=export.manifest.seed)).eval()
    backend = OnnxRuntimeRunner(export).activate()
    x = torch.rand(1, 3, *args.size, generator=torch.Generator().manual_seed(0))
    ort_times = timed(lambda: backend.run("forward", {"x": x}), args.runs)
    with torch.no_grad():
        eager_times = timed(lambda: model(x, training=False), args.runs)

    def summary(t: list[float]) -> str:
        return f"median {statistics.median(t) * 1e3:.0f} ms (min {min(t) * 1e3:.0f}, max {max(t) * 1e3:.0f}, N={len(t)})"

    print(f"variant {export.variant.name}, {args.size[0]}x{args.size[1]}, torch threads "
          f"{torch.get_num_threads()}, backend {backend.fingerprint}")
    print(f"  onnxruntime CPU forward: {summary(ort_times)}")
    print(f"  eager PyTorch CPU      : {summary(eager_times)}")


if __name__ == "__main__":
    main()
