#!/usr/bin/env python
"""Latency of the Bi-WKV CUDA kernel against the DRAM floor and the vectorised PyTorch op, on one GPU.

The kernel is timed with one pair of CUDA events per call on a dedicated stream. The host queues
each batch of calls behind a sleep kernel, so the events see GPU time only (no launch gaps, no
host-device copies). The floor is the kernel's compulsory traffic (read k and v, write y) at the
device-to-device copy bandwidth measured in the same process. The vectorised op
(the mode's guarded evaluation) synchronises with the host inside every call (its validity check), so it is timed
call by call and its numbers include that synchronisation.

The ``BTC+`` column is the layout measurement: the RWKV cells hold (B, C, H*W) feature maps, so a
(B, T, C) kernel would need k and v transposed in and y transposed back. It is three such transposes,
timed like the kernel; a (B, T, C) kernel would have to beat this (B, C, T) one by that much to pay.

Each mode of the contract (``--mode exact vrwkv``) is timed row by row, the vectorised op in the same
mode beside it.

    python scripts/bench_biwkv.py --B 1 --C 640 --T 1536 12288 34560 --dtype float32 float16 --mode exact vrwkv
"""

from __future__ import annotations

import argparse
import time

import torch

from hpcm.plugins.biwkv import CONTRACT, WKV_MODES
from hpcm.plugins.biwkv.cuda import load_cuda_kernel

DTYPES = {"float32": torch.float32, "float16": torch.float16}
BATCH = 50
# About 10 ms at common GPU clocks: enough for the host to queue BATCH calls of the extension.
SLEEP_CYCLES = 20_000_000


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def summary(times_us: list[float]) -> dict[str, float]:
    ordered = sorted(times_us)
    return {
        "median": percentile(ordered, 0.5),
        "p90": percentile(ordered, 0.9),
        "p99": percentile(ordered, 0.99),
        "mean": sum(ordered) / len(ordered),
        "n": len(ordered),
    }


def warm_up(fn, stream: torch.cuda.Stream, iterations: int, seconds: float) -> None:
    with torch.cuda.stream(stream):
        start = time.perf_counter()
        done = 0
        while done < iterations or time.perf_counter() - start < seconds:
            fn()
            done += 1
            if done % BATCH == 0:
                stream.synchronize()
        stream.synchronize()


def time_queued(fn, stream: torch.cuda.Stream, iterations: int) -> list[float]:
    times = []
    with torch.cuda.stream(stream):
        for first in range(0, iterations, BATCH):
            count = min(BATCH, iterations - first)
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(count)]
            torch.cuda._sleep(SLEEP_CYCLES)
            for start, end in events:
                start.record(stream)
                fn()
                end.record(stream)
            stream.synchronize()
            times.extend(start.elapsed_time(end) * 1e3 for start, end in events)
    return times


def time_synchronous(fn, stream: torch.cuda.Stream, iterations: int) -> list[float]:
    times = []
    with torch.cuda.stream(stream):
        for _ in range(iterations):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            fn()
            end.record(stream)
            stream.synchronize()
            times.append(start.elapsed_time(end) * 1e3)
    return times


def copy_bandwidth(stream: torch.cuda.Stream, iterations: int) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting read and write (256 MiB each way)."""
    src = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    warm_up(lambda: dst.copy_(src), stream, 10, 0.2)
    median_us = summary(time_queued(lambda: dst.copy_(src), stream, iterations))["median"]
    return 2 * src.numel() / (median_us * 1e-6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--B", type=int, default=1)
    parser.add_argument("--C", type=int, default=640)
    parser.add_argument("--T", type=int, nargs="+", default=[1536, 12288, 34560])
    parser.add_argument("--dtype", choices=sorted(DTYPES), nargs="+", default=["float32", "float16"])
    parser.add_argument("--mode", choices=CONTRACT.modes, nargs="+", default=list(CONTRACT.modes))
    parser.add_argument("--iters", type=int, default=200, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=50, help="warm-up calls (and at least one second)")
    parser.add_argument("--eager-iters", type=int, default=30, help="timed calls of the vectorised op")
    args = parser.parse_args()

    extension = load_cuda_kernel()
    device = torch.cuda.get_device_name()
    stream = torch.cuda.Stream()
    bandwidth = copy_bandwidth(stream, 50)
    print(f"device: {device}; torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(f"device copy bandwidth (read + write): {bandwidth / 1e9:.0f} GB/s")
    print("times in us; kernel excludes host launch overhead and host-device copies")
    header = (
        f"{'mode':>5} {'B':>3} {'C':>5} {'T':>6} {'dtype':>7} | "
        f"{'median':>8} {'p90':>8} {'p99':>8} {'mean':>8} {'N':>4} | "
        f"{'floor':>7} {'floor%':>6} {'GB/s':>6} | {'eager':>8} {'speedup':>7} | {'BTC+':>7}"
    )
    print(header)
    print("-" * len(header))
    for mode, dtype_name, T in ((m, d, t) for m in args.mode for d in args.dtype for t in args.T):
        dtype = DTYPES[dtype_name]
        mode_index = CONTRACT.modes.index(mode)
        g = torch.Generator(device="cuda").manual_seed(T)
        w = (torch.rand(args.C, device="cuda", generator=g) * 6 - 3) / T
        u = (torch.rand(args.C, device="cuda", generator=g) * 4 - 2) / T
        k = (torch.rand(args.B, args.C, T, device="cuda", generator=g) * 8 - 4).to(dtype)
        v = (torch.rand(args.B, args.C, T, device="cuda", generator=g) * 2 - 1).to(dtype)

        def kernel():
            return extension.forward(w, u, k, v, mode_index)

        def eager():
            return WKV_MODES[mode].eager(w, u, k, v)

        warm_up(kernel, stream, args.warmup, 1.0)
        stats = summary(time_queued(kernel, stream, args.iters))

        def transpose():
            return k.transpose(1, 2).contiguous()

        warm_up(transpose, stream, args.warmup, 0.2)
        transposes_us = 3 * summary(time_queued(transpose, stream, args.iters))["median"]
        warm_up(eager, stream, 3, 0.0)
        eager_stats = summary(time_synchronous(eager, stream, args.eager_iters))

        traffic = 3 * k.numel() * k.element_size() + 2 * args.C * 4
        floor_us = traffic / bandwidth * 1e6
        print(
            f"{mode:>5} {args.B:>3} {args.C:>5} {T:>6} {dtype_name:>7} | {stats['median']:>8.1f} {stats['p90']:>8.1f} "
            f"{stats['p99']:>8.1f} {stats['mean']:>8.1f} {stats['n']:>4} | {floor_us:>7.1f} "
            f"{100 * floor_us / stats['median']:>5.0f}% {traffic / (stats['median'] * 1e-6) / 1e9:>6.0f} | "
            f"{eager_stats['median']:>8.1f} {eager_stats['median'] / stats['median']:>6.1f}x | {transposes_us:>7.1f}"
        )


if __name__ == "__main__":
    main()
