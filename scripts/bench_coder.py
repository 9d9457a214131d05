"""Throughput and size overhead of the rANS coder on one step of symbols (by default Kodak-sized).

Scales are log-normal around the range a trained HPCM uses, residuals are drawn from the GGM at
those scales (plus a few large outliers to exercise the escape path), and the size is compared with
the ideal -sum(log2 p) under the same quantized tables. The coder takes the scales as the codec
gives them (buckets and the guard's screen in the same pass) and cuts the step into substreams as
the codec does; ``--threads`` codes them in parallel.
"""

from __future__ import annotations

import time

import click
import numpy as np
import torch

from hpcm.codec.guard import DEFAULT_EPSILON, ScreenWindows
from hpcm.codec.rans import (CdfTables, Coder, ScaleBuckets, SubstreamReader, ideal_bits, native_library,
                             pack_substreams, substream_offsets)
from hpcm.models.cdf_tables import default_scale_table, quantized_cdf_tables, scale_indexes


def synthetic_step(n: int, seed: int, beta: float = 1.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(residual symbols as float32, table indexes, scales as float32) for n symbols with realistic scales."""
    rng = np.random.default_rng(seed)
    table = default_scale_table()
    scales = np.exp(rng.normal(np.log(0.6), 1.1, n)).clip(0.05, 80.0)
    magnitude = rng.gamma(1.0 / beta, 1.0, n) ** (1.0 / beta)
    values = np.round(np.where(rng.random(n) < 0.5, -1.0, 1.0) * magnitude * scales)
    outliers = rng.random(n) < 1e-4
    values[outliers] += rng.integers(-5000, 5000, outliers.sum())
    scales = scales.astype(np.float32)
    return values.astype(np.float32), scale_indexes(torch.from_numpy(scales), table).numpy(), scales


@click.command()
@click.option("--symbols", default=491_520, show_default=True, help="symbols per step (Kodak y: 320*32*48)")
@click.option("--repeats", default=5, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=1, show_default=True, help="threads coding the step's substreams")
@click.option("--compare-constriction/--no-compare-constriction", default=True, show_default=True)
def main(symbols: int, repeats: int, seed: int, threads: int, compare_constriction: bool) -> None:
    if native_library() is None:
        raise click.ClickException("the native coder is unavailable (the pure-Python coder codes from indexes only)")
    table = default_scale_table()
    tables, buckets = CdfTables(*quantized_cdf_tables(table)), ScaleBuckets(table)
    windows = ScreenWindows(table, DEFAULT_EPSILON)
    values, idx, scales = synthetic_step(symbols, seed)
    coder, offsets = Coder(threads), substream_offsets(symbols)
    enc_times, dec_times = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        coded = coder.encode(values, tables, offsets, scales=scales, buckets=buckets, windows=windows)
        data = pack_substreams([coded])
        t1 = time.perf_counter()
        reader = SubstreamReader(data)
        out = coder.decode(reader, reader.take(offsets.size - 1), offsets, tables, scales=scales, buckets=buckets)
        reader.finish()
        t2 = time.perf_counter()
        enc_times.append(t1 - t0)
        dec_times.append(t2 - t1)
        assert np.array_equal(out, values)
    ideal = ideal_bits(values, idx, tables)
    enc_t, dec_t = min(enc_times), min(dec_times)
    click.echo(f"symbols: {symbols} in {offsets.size - 1} substreams, {threads} thread(s), "
               f"escapes: {reader.escapes.size}, guard listed: {coded.listed.size}")
    click.echo(f"encode: {symbols / enc_t / 1e6:.1f} M symbols/s ({enc_t * 1e3:.2f} ms, best of {repeats})")
    click.echo(f"decode: {symbols / dec_t / 1e6:.1f} M symbols/s ({dec_t * 1e3:.2f} ms, best of {repeats})")
    click.echo(f"size: {len(data)} bytes, ideal {ideal / 8:.0f} bytes, "
               f"overhead {100 * (8 * len(data) / ideal - 1):+.3f} %")
    if compare_constriction:
        _bench_constriction(values, idx, tables, repeats)


def _bench_constriction(values: np.ndarray, idx: np.ndarray, tables: CdfTables, repeats: int) -> None:
    """The alternative that was measured: constriction's ANS, one Categorical per table row,
    symbols grouped by row (escapes are not supported there, so they are clamped to the tail)."""
    try:
        import constriction
    except ImportError:
        click.echo("constriction not installed: comparison skipped")
        return
    tail = tables.length[idx] - 2
    sym = values.astype(np.int32) - tables.offset[idx]
    sym = np.where((sym < 0) | (sym >= tail), tail, sym).astype(np.int32)
    order = np.argsort(idx, kind="stable")
    bounds = np.searchsorted(idx[order], np.arange(tables.count + 1))
    models = []
    for r in range(tables.count):
        freq = np.diff(tables.cdf[r, : tables.length[r]]).astype(np.float64)
        models.append(constriction.stream.model.Categorical(freq / freq.sum(), perfect=False))
    enc_t, dec_t = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        coder = constriction.stream.stack.AnsCoder()
        for r in range(tables.count - 1, -1, -1):
            part = sym[order[bounds[r]:bounds[r + 1]]]
            if part.size:
                coder.encode_reverse(part, models[r])
        compressed = coder.get_compressed()
        t1 = time.perf_counter()
        coder = constriction.stream.stack.AnsCoder(compressed)
        out = np.empty_like(sym)
        for r in range(tables.count):
            n = bounds[r + 1] - bounds[r]
            if n:
                out[order[bounds[r]:bounds[r + 1]]] = coder.decode(models[r], n)
        t2 = time.perf_counter()
        enc_t.append(t1 - t0)
        dec_t.append(t2 - t1)
    assert np.array_equal(out, sym)
    n = sym.size
    click.echo(f"constriction (grouped Categorical): encode {n / min(enc_t) / 1e6:.1f} M symbols/s, "
               f"decode {n / min(dec_t) / 1e6:.1f} M symbols/s, size {4 * compressed.size} bytes")


if __name__ == "__main__":
    main()
