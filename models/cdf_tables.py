"""Quantized CDF tables of HPCM's generalized Gaussian (GGM) entropy model.

The tables are computed once, in float64, and stored with the model (buffers ``quantized_cdf_*``,
``cdf_length_*``, ``offset_*``): a decoder must never rebuild them from floats on its own machine,
because a single differing frequency changes every later symbol of a rANS stream.

Layout of one table row (entry i, as in the official entropy model):
``cdf[i, 0] = 0``, ``cdf[i, k + 1] - cdf[i, k]`` is the frequency of symbol ``k`` for
``k < cdf_length[i] - 1``, where symbols ``0 .. cdf_length[i] - 3`` stand for residuals
``offset[i] .. -offset[i]`` and symbol ``cdf_length[i] - 2`` is the tail (escape) symbol;
``cdf[i, cdf_length[i] - 1] = 2 ** precision``. Rows are zero padded to the longest one.
"""

from __future__ import annotations

import math

import torch

from hpcm.errors import EntropyTableError

# The model buffers that hold the entropy tables, in the one order every digest of them uses (the
# tables digest in each bitstream depends on it: changing it makes existing .hpcm files undecodable).
TABLE_NAMES = ("scale_table", "quantized_cdf_y", "cdf_length_y", "offset_y",
               "quantized_cdf_z", "cdf_length_z", "offset_z")

SCALE_TABLE_MIN = 0.12
SCALE_TABLE_MAX = 64.0
SCALE_TABLE_LEVELS = 60


def default_scale_table() -> torch.Tensor:
    """HPCM's 60 log-spaced scales from 0.12 to 64 (float32, as the official buffer stores them)."""
    table = torch.linspace(math.log(SCALE_TABLE_MIN), math.log(SCALE_TABLE_MAX), SCALE_TABLE_LEVELS,
                           dtype=torch.float64).exp()
    return table.to(torch.float32)


def scale_indexes(scales: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Bucket index of every scale: the number of entries of ``table[:-1]`` strictly below it.

    Comparisons, not a log formula, so that the index depends only on the float ordering of the
    scale against the stored table values, which both sides of a codec share bit-exactly.
    Returns int32 with the shape of ``scales``; NaN scales map to 0.
    """
    bounds = table[:-1].to(device=scales.device, dtype=scales.dtype)
    # searchsorted(right=False) counts the bounds strictly below each value and, unlike the
    # broadcast comparison, does not allocate a (..., 59) intermediate.
    flat = scales.reshape(-1).contiguous()
    idx = torch.searchsorted(bounds.contiguous(), flat, right=False)
    idx = torch.where(torch.isnan(flat), torch.zeros_like(idx), idx)
    return idx.to(torch.int32).reshape(scales.shape)


def _ggm_cdf(x: torch.Tensor, beta: float) -> torch.Tensor:
    """Standardized generalized Gaussian CDF, float64."""
    return 0.5 * (1.0 + torch.sign(x) * torch.special.gammainc(
        torch.full_like(x, 1.0 / beta), x.abs() ** beta))


def ggm_upper_quantile(tail: float, beta: float) -> float:
    """x > 0 with P(X > x) = tail for the standardized GGM, by bisection (no scipy at import)."""
    if not 0.0 < tail < 0.5:
        raise ValueError(f"tail probability must be in (0, 0.5), got {tail}")
    lo, hi = 0.0, 1.0
    while 1.0 - _ggm_cdf(torch.tensor([hi], dtype=torch.float64), beta).item() > tail:
        hi *= 2.0
    # 200 halvings reach float64 resolution from any starting bracket that float64 can hold.
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if 1.0 - _ggm_cdf(torch.tensor([mid], dtype=torch.float64), beta).item() > tail:
            lo = mid
        else:
            hi = mid
    return hi


def quantize_pmf(pmf: torch.Tensor, precision: int = 16) -> torch.Tensor:
    """Integer frequencies summing to ``2**precision`` with every symbol at least 1.

    Frequencies start at ``max(1, floor(p * 2**precision))``; counts still missing go to the largest
    fractional parts, and counts in excess (from the minimum of 1) are taken from the largest
    frequencies, where one count costs the least. Sorting is stable, so ties go to the lower symbol
    and the result is a deterministic function of the float64 pmf.
    """
    n = pmf.numel()
    total = 1 << precision
    if n > total:
        raise ValueError(f"{n} symbols do not fit {precision}-bit frequencies")
    p = pmf.to(torch.float64).clamp_min(0.0)
    share = p / p.sum() * float(total)
    base = torch.floor(share)
    freq = base.to(torch.int64).clamp_min(1)
    missing = total - int(freq.sum())
    if missing > 0:
        # floor(share) sums to at least total - n + 1, so at most n - 1 counts are missing
        remainder = torch.where(base >= 1, share - base, torch.full_like(share, -1.0))
        order = torch.sort(-remainder, stable=True).indices
        freq[order[:missing]] += 1
    while missing < 0:
        order = torch.sort(-freq, stable=True).indices
        take = order[: min(-missing, int((freq > 1).sum()))]
        freq[take] -= 1
        missing += take.numel()
    return freq


def quantized_cdf_tables(
    scales: torch.Tensor,
    beta: float = 1.5,
    scale_bound: float = 0.12,
    tail_mass: float = 1e-6,
    precision: int = 16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantized CDFs of the GGM at the given scales (one row per scale).

    Returns ``(cdf, cdf_length, offset)``: int32 ``(N, max_len + 2)`` zero padded, int32 ``(N,)``
    and int32 ``(N,)`` as described in the module docstring. Scales are lower bounded by
    ``scale_bound`` first, like the likelihood model does.
    """
    s = scales.detach().reshape(-1).to(device="cpu", dtype=torch.float64).clamp_min(scale_bound)
    if not torch.isfinite(s).all():
        raise EntropyTableError("scales must be finite to compute CDF tables")
    multiplier = ggm_upper_quantile(tail_mass / 2.0, beta)
    # a row has a symbol per integer in +-scale*multiplier, each needing a frequency of at least 1:
    # refuse scales whose rows cannot fit ``precision`` bits before allocating them
    largest = (2 ** precision - 3) // 2 / multiplier
    if float(s.max()) > largest:
        raise EntropyTableError(f"a scale of {float(s.max()):.4g} is too large for {precision}-bit CDF tables "
                                f"(at most {largest:.4g})")
    centers = torch.ceil(s * multiplier).to(torch.int64)
    lengths = 2 * centers + 1
    max_len = int(lengths.max())
    cdf = torch.zeros((s.numel(), max_len + 2), dtype=torch.int32)
    for i in range(s.numel()):
        c = int(centers[i])
        k = torch.arange(-c, c + 1, dtype=torch.float64)
        upper = _ggm_cdf((k + 0.5) / s[i], beta)
        lower = _ggm_cdf((k - 0.5) / s[i], beta)
        pmf = upper - lower
        # the tail symbol carries exactly the mass outside the coded range
        tail = (lower[0] + (1.0 - upper[-1])).clamp_min(0.0)
        freq = quantize_pmf(torch.cat([pmf, tail.reshape(1)]), precision)
        row = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(freq, 0)])
        cdf[i, : row.numel()] = row.to(torch.int32)
    return cdf, (lengths + 2).to(torch.int32), (-centers).to(torch.int32)
