"""Quantized CDF tables of HPCM's generalized Gaussian (GGM) entropy model, the same integers on every machine.

An encoder and a decoder that hold different tables cannot talk: one differing frequency changes every
later symbol of a rANS stream. Tables computed with float64 library functions are not the same
integers everywhere (``torch.special.gammainc`` gives other last bits in ATen's AVX-512 build than in
its AVX2 and default builds: 636 of the 6,988 values the y tables need, enough to change their
integers), so they are computed here in decimal arithmetic (Python's ``decimal``: correctly rounded
+, -, *, /, sqrt, exp and ln at a chosen number of digits, the same result on every machine and
build), and every rounding decision (the floor of a frequency, which remainders get the missing
counts, the width of a row) is checked to lie farther from its boundary than the arithmetic's error;
a decision that does not is settled again with twice the digits. The result is therefore the
rounding of the exact GGM, which ``tests/test_cdf_tables.py`` checks for every row against an
independent computation with mpmath.

The y tables of the default scale table (all a model with HPCM's entropy model needs besides its
per-channel z tables) are shipped precomputed in ``ggm_y_tables.npz`` (``python -m
hpcm.models.cdf_tables`` writes it; a test recomputes it).

Layout of one table row (entry i, as in the official entropy model):
``cdf[i, 0] = 0``, ``cdf[i, k + 1] - cdf[i, k]`` is the frequency of symbol ``k`` for
``k < cdf_length[i] - 1``, where symbols ``0 .. cdf_length[i] - 3`` stand for residuals
``offset[i] .. -offset[i]`` and symbol ``cdf_length[i] - 2`` is the tail (escape) symbol;
``cdf[i, cdf_length[i] - 1] = 2 ** precision``. Rows are zero padded to the longest one.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Context, Decimal, DivisionByZero, InvalidOperation, Overflow
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from hpcm.errors import EntropyTableError

# The model buffers that hold the entropy tables, in the one order every digest of them uses (the
# tables digest in each bitstream depends on it: changing it makes existing .hpcm files undecodable).
TABLE_NAMES = ("scale_table", "quantized_cdf_y", "cdf_length_y", "offset_y",
               "quantized_cdf_z", "cdf_length_z", "offset_z")

SCALE_TABLE_MIN = 0.12
SCALE_TABLE_MAX = 64.0
SCALE_TABLE_LEVELS = 60

DEFAULT_Y_TABLES = Path(__file__).resolve().with_name("ggm_y_tables.npz")

# Digits of the first attempt, and how far (in digits below the last) a rounding decision must lie
# from its boundary to be trusted; a closer one is settled again with twice the digits.
WORKING_DIGITS = 40
MARGIN_DIGITS = 12
MAX_DIGITS = 320


@dataclass(frozen=True)
class GGMQuantization:
    """What a table row is a function of, besides its scale."""

    beta: float = 1.5
    scale_bound: float = 0.12
    tail_mass: float = 1e-6
    precision: int = 16


DEFAULT_QUANTIZATION = GGMQuantization()


class _Unsettled(Exception):
    """A rounding decision lay within the arithmetic's error of its boundary: retry with more digits."""


# ---------------------------------------------------------------------------------- decimal arithmetic
class _Arithmetic:
    """Decimal arithmetic at ``digits`` significant digits, with the constants the GGM needs."""

    def __init__(self, digits: int, beta: float) -> None:
        self.digits = digits
        self.ctx = Context(prec=digits, Emin=-10 ** 6, Emax=10 ** 6,
                           traps=[InvalidOperation, DivisionByZero, Overflow])
        self.tolerance = Decimal(10) ** (MARGIN_DIGITS - digits)
        self.beta = Decimal(beta)
        self.shape = self.ctx.divide(Decimal(1), self.beta)  # a = 1 / beta
        self.ln_gamma_shape_plus_one = _ln_gamma(self.shape + 1, self.ctx)

    def power(self, x: Decimal, exponent: Decimal) -> Decimal:
        """x ** exponent for x >= 0 through exp and ln (both correctly rounded in ``decimal``)."""
        if x == 0:
            return Decimal(0)
        return self.ctx.exp(self.ctx.multiply(exponent, self.ctx.ln(x)))

    def lower_regularized_gamma(self, t: Decimal) -> Decimal:
        """P(a, t) by its power series  t^a e^-t / Gamma(a + 1) * sum_n t^n / ((a + 1) ... (a + n)).

        Every term is positive, so no cancellation; the series runs until a term no longer changes
        the sum at this precision.
        """
        if t == 0:
            return Decimal(0)
        ctx, a = self.ctx, self.shape
        term = total = Decimal(1)
        stop = Decimal(10) ** (-self.digits - 2)
        n = 0
        while True:
            n += 1
            term = ctx.divide(ctx.multiply(term, t), a + n)
            total = ctx.add(total, term)
            if term < ctx.multiply(total, stop):
                break
        log_prefix = ctx.subtract(ctx.subtract(ctx.multiply(a, ctx.ln(t)), t), self.ln_gamma_shape_plus_one)
        return ctx.multiply(ctx.exp(log_prefix), total)

    def two_sided_tail(self, x: Decimal) -> Decimal:
        """P(|X| > x) for the standardized GGM: 1 - P(a, x^beta)."""
        return self.ctx.subtract(Decimal(1), self.lower_regularized_gamma(self.power(x, self.beta)))


def _pi(ctx: Context) -> Decimal:
    """pi by Machin's formula, 16 atan(1/5) - 4 atan(1/239), each series summed to the context's precision."""
    def arctan_inverse(n: int) -> Decimal:
        x = ctx.divide(Decimal(1), Decimal(n))
        square = ctx.multiply(x, x)
        total, power, k = x, x, 1
        while True:
            power = ctx.multiply(power, square)
            term = ctx.divide(power, Decimal(2 * k + 1))
            if term == 0 or ctx.add(total, -term if k % 2 else term) == total:
                break
            total = ctx.add(total, -term if k % 2 else term)
            k += 1
        return total
    return ctx.subtract(ctx.multiply(Decimal(16), arctan_inverse(5)), ctx.multiply(Decimal(4), arctan_inverse(239)))


@functools.lru_cache(maxsize=None)
def _bernoulli_even(count: int) -> tuple[Fraction, ...]:
    """B_2, B_4, ..., B_2count exactly, from the recurrence  sum_{k<=m} C(m+1, k) B_k = 0."""
    numbers = [Fraction(1)]
    for m in range(1, 2 * count + 1):
        numbers.append(-sum(math.comb(m + 1, k) * numbers[k] for k in range(m)) / (m + 1))
    return tuple(numbers[2 * k] for k in range(1, count + 1))


def _ln_gamma(z: Decimal, ctx: Context) -> Decimal:
    """ln Gamma(z) for z > 0: Stirling's series at w = z + shift >= 64, less ln(z (z+1) ... (w-1)).

    With w >= 64 and 40 terms the series' error is below 1e-140, beyond every precision used here.
    """
    shift_product, w = Decimal(1), z
    while w < 64:
        shift_product = ctx.multiply(shift_product, w)
        w = ctx.add(w, Decimal(1))
    two_pi = ctx.multiply(Decimal(2), _pi(ctx))
    value = ctx.add(ctx.subtract(ctx.multiply(ctx.subtract(w, Decimal("0.5")), ctx.ln(w)), w),
                    ctx.multiply(Decimal("0.5"), ctx.ln(two_pi)))
    w_power, w_square = w, ctx.multiply(w, w)
    for k, b in enumerate(_bernoulli_even(40), start=1):
        coefficient = ctx.divide(Decimal(b.numerator), Decimal(b.denominator * 2 * k * (2 * k - 1)))
        value = ctx.add(value, ctx.divide(coefficient, w_power))
        w_power = ctx.multiply(w_power, w_square)
    return ctx.subtract(value, ctx.ln(shift_product))


@functools.lru_cache(maxsize=None)
def _arithmetic(digits: int, beta: float) -> _Arithmetic:
    return _Arithmetic(digits, beta)


# ------------------------------------------------------------------------------------- rounding decisions
def _check_margin(distance: Decimal, arithmetic: _Arithmetic) -> None:
    if distance < arithmetic.tolerance:
        raise _Unsettled


def _floor_settled(value: Decimal, arithmetic: _Arithmetic) -> int:
    """floor(value), refusing a value within the arithmetic's error of an integer."""
    floor = int(value.to_integral_value(rounding=ROUND_FLOOR))
    _check_margin(min(value - floor, floor + 1 - value), arithmetic)
    return floor


def _ceil_settled(value: Decimal, arithmetic: _Arithmetic) -> int:
    return -_floor_settled(-value, arithmetic)


@functools.lru_cache(maxsize=None)
def _upper_quantile(tail: float, beta: float, digits: int) -> Decimal:
    """x > 0 with P(X > x) = tail for the standardized GGM, by bisection to the precision's last digits."""
    arithmetic = _arithmetic(digits, beta)
    target = Decimal(2) * Decimal(tail)  # P(|X| > x) = 2 * P(X > x)
    lo, hi = Decimal(0), Decimal(1)
    while arithmetic.two_sided_tail(hi) > target:
        hi *= 2
    resolution = arithmetic.ctx.multiply(hi, arithmetic.ctx.multiply(arithmetic.tolerance,
                                                                      Decimal(10) ** (-MARGIN_DIGITS)))
    while hi - lo > resolution:
        mid = arithmetic.ctx.divide(lo + hi, Decimal(2))
        if mid in (lo, hi):
            break
        if arithmetic.two_sided_tail(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


def ggm_upper_quantile(tail: float, beta: float) -> float:
    """x > 0 with P(X > x) = tail for the standardized GGM (float of the decimal result)."""
    if not 0.0 < tail < 0.5:
        raise ValueError(f"tail probability must be in (0, 0.5), got {tail}")
    return float(_upper_quantile(tail, beta, WORKING_DIGITS))


def quantize_pmf(pmf: Sequence, precision: int = 16, digits: int = WORKING_DIGITS,
                 settle: bool = False) -> list[int]:
    """Integer frequencies summing to ``2**precision`` with every symbol at least 1.

    Frequencies start at ``max(1, floor(p * 2**precision))`` (p normalised by the sum); counts still
    missing go to the largest fractional parts, and counts in excess (from the minimum of 1) are taken
    from the largest frequencies, where one count costs the least. Ties go to the lower symbol, so
    the two mirrored symbols of a symmetric pmf, equal by construction, are ordered by index.
    ``pmf`` holds Decimals, Fractions, ints or floats (converted at ``digits`` digits). With
    ``settle``, a floor or a choice of remainders that lies within the arithmetic's error of its
    boundary raises ``_Unsettled`` instead of being taken.
    """
    n = len(pmf)
    total = 1 << precision
    if n > total:
        raise ValueError(f"{n} symbols do not fit {precision}-bit frequencies")
    arithmetic = _arithmetic(digits, DEFAULT_QUANTIZATION.beta)
    ctx = arithmetic.ctx
    values = [max(_to_decimal(p, ctx), Decimal(0)) for p in pmf]
    mass = sum(values, Decimal(0))
    if mass <= 0:
        raise ValueError("a pmf must have positive mass")
    per_unit = ctx.divide(Decimal(total), mass)
    shares = [ctx.multiply(v, per_unit) for v in values]
    floors = [int(share.to_integral_value(rounding=ROUND_FLOOR)) for share in shares]
    if settle:
        # only floors at 1 or above decide a count (below, every symbol gets the minimum of 1)
        for share, floor in zip(shares, floors):
            if share >= Decimal("0.5"):
                _check_margin(min(share - floor, floor + 1 - share), arithmetic)
    freq = [max(1, f) for f in floors]
    missing = total - sum(freq)
    if missing > 0:
        # floor(share) sums to at least total - n + 1, so at most n - 1 counts are missing
        remainder = {i: shares[i] - floors[i] for i in range(n) if floors[i] >= 1}
        candidates = sorted(remainder, key=lambda i: (-remainder[i], i))
        if settle and missing < len(candidates):
            gap = remainder[candidates[missing - 1]] - remainder[candidates[missing]]
            if gap != 0:  # an exact tie (mirrored symbols) is decided by index, on every machine
                _check_margin(gap, arithmetic)
        for i in candidates[:missing]:
            freq[i] += 1
    while missing < 0:
        order = sorted(range(n), key=lambda i: (-freq[i], i))
        take = order[: min(-missing, sum(1 for f in freq if f > 1))]
        for i in take:
            freq[i] -= 1
        missing += len(take)
    return freq


def _to_decimal(value, ctx: Context) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, Fraction):
        return ctx.divide(Decimal(value.numerator), Decimal(value.denominator))
    return Decimal(value)  # ints and floats convert exactly


# ------------------------------------------------------------------------------------------- table rows
def _row_at(scale: float, quantization: GGMQuantization, digits: int) -> list[int]:
    """The cumulative counts of one row (symbols, then the tail symbol), at ``digits`` digits."""
    arithmetic = _arithmetic(digits, quantization.beta)
    ctx = arithmetic.ctx
    s = Decimal(scale)
    multiplier = _upper_quantile(quantization.tail_mass / 2.0, quantization.beta, digits)
    center = _ceil_settled(ctx.multiply(s, multiplier), arithmetic)
    # P(|X| <= (j + 1/2) / s) for j = 0 .. center: the symmetric GGM's mass inside each half-integer
    inside = [arithmetic.lower_regularized_gamma(arithmetic.power(ctx.divide(Decimal(j) + Decimal("0.5"), s),
                                                                  arithmetic.beta))
              for j in range(center + 1)]
    half = [ctx.divide(ctx.subtract(inside[j], inside[j - 1]), Decimal(2)) for j in range(1, center + 1)]
    # residuals -center .. center mirrored from one side (equal by construction), then the tail symbol
    # with exactly the mass outside the coded range
    pmf = [*reversed(half), inside[0], *half, ctx.subtract(Decimal(1), inside[center])]
    freq = quantize_pmf(pmf, quantization.precision, digits, settle=True)
    return [0, *np.cumsum(freq).tolist()]


@functools.lru_cache(maxsize=4096)
def table_row(scale: float, quantization: GGMQuantization = DEFAULT_QUANTIZATION) -> tuple[int, ...]:
    """Cumulative counts of the row for ``scale`` (a float, already lower-bounded), rounding settled."""
    digits = WORKING_DIGITS
    while True:
        try:
            return tuple(_row_at(scale, quantization, digits))
        except _Unsettled:
            digits *= 2
            if digits > MAX_DIGITS:
                raise EntropyTableError(f"the CDF row of scale {scale!r} cannot be settled with {MAX_DIGITS} digits")


def quantized_cdf_tables(scales: torch.Tensor, quantization: GGMQuantization = DEFAULT_QUANTIZATION,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantized CDFs of the GGM at the given scales (one row per scale).

    Returns ``(cdf, cdf_length, offset)``: int32 ``(N, max_len + 2)`` zero padded, int32 ``(N,)``
    and int32 ``(N,)`` as described in the module docstring. Scales are lower bounded by the scale
    bound first, like the likelihood model does. Each row is a function of the scale's float value
    alone: equal scales share one computation.
    """
    beta, scale_bound, precision = quantization.beta, quantization.scale_bound, quantization.precision
    values = scales.detach().reshape(-1).to(device="cpu", dtype=torch.float64).clamp_min(scale_bound)
    if not torch.isfinite(values).all():
        raise EntropyTableError("scales must be finite to compute CDF tables")
    multiplier = ggm_upper_quantile(quantization.tail_mass / 2.0, beta)
    # a row has a symbol per integer in +-scale*multiplier, each needing a frequency of at least 1:
    # refuse scales whose rows cannot fit ``precision`` bits before computing them
    largest = (2 ** precision - 3) // 2 / multiplier
    if values.numel() and float(values.max()) > largest:
        raise EntropyTableError(f"a scale of {float(values.max()):.4g} is too large for {precision}-bit CDF tables "
                                f"(at most {largest:.4g})")
    rows = [table_row(value, quantization) for value in values.tolist()]
    width = max((len(r) for r in rows), default=0)
    cdf = torch.zeros((len(rows), width), dtype=torch.int32)
    for i, row in enumerate(rows):
        cdf[i, : len(row)] = torch.tensor(row, dtype=torch.int32)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.int32)
    return cdf, lengths, -((lengths - 3) // 2)


# ----------------------------------------------------------------------------------- the default y tables
@functools.lru_cache(maxsize=1)
def _default_y_arrays() -> dict[str, np.ndarray]:
    with np.load(DEFAULT_Y_TABLES) as stored:
        return {name: stored[name] for name in stored.files}


def default_scale_table() -> torch.Tensor:
    """HPCM's 60 log-spaced scales from 0.12 to 64 (float32, as the official buffer stores them).

    The float32 roundings of exp(linspace(ln 0.12, ln 64, 60)), stored bit for bit rather than
    recomputed with a float exp whose last bits could differ.
    """
    return torch.from_numpy(_default_y_arrays()["scale_table"].copy())


def default_y_tables(quantization: GGMQuantization = DEFAULT_QUANTIZATION) -> tuple[torch.Tensor, ...]:
    """``(cdf, cdf_length, offset)`` of the default scale table; the shipped ones for the default GGM."""
    if quantization == DEFAULT_QUANTIZATION:
        stored = _default_y_arrays()
        return tuple(torch.from_numpy(stored[n].copy()) for n in ("quantized_cdf_y", "cdf_length_y", "offset_y"))
    return quantized_cdf_tables(default_scale_table(), quantization)


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


def _float32_settled(value: Decimal, arithmetic: _Arithmetic) -> np.float32:
    """The float32 nearest to ``value``, refusing a value within the arithmetic's error of a tie."""
    nearest = np.float32(float(value))
    toward = np.float32(np.inf) if Decimal(float(nearest)) < value else np.float32(-np.inf)
    midpoint = (Decimal(float(nearest)) + Decimal(float(np.nextafter(nearest, toward)))) / 2
    _check_margin(abs(value - midpoint) / value, arithmetic)
    return nearest


def scale_table_from_definition() -> np.ndarray:
    """float32 of exp(ln 0.12 + i (ln 64 - ln 0.12) / 59), i = 0 .. 59, each rounding settled."""
    arithmetic = _arithmetic(WORKING_DIGITS, DEFAULT_QUANTIZATION.beta)
    ctx = arithmetic.ctx
    low, high = ctx.ln(Decimal(SCALE_TABLE_MIN)), ctx.ln(Decimal(SCALE_TABLE_MAX))
    step = ctx.divide(ctx.subtract(high, low), Decimal(SCALE_TABLE_LEVELS - 1))
    return np.array([_float32_settled(ctx.exp(ctx.add(low, ctx.multiply(Decimal(i), step))), arithmetic)
                     for i in range(SCALE_TABLE_LEVELS)], dtype=np.float32)


def write_default_y_tables(path: Path = DEFAULT_Y_TABLES) -> None:
    """Compute the default scale table and its y tables from their definitions and write them to ``path``."""
    scale_table = scale_table_from_definition()
    cdf, length, offset = quantized_cdf_tables(torch.from_numpy(scale_table))
    np.savez_compressed(path, scale_table=scale_table, quantized_cdf_y=cdf.numpy(),
                        cdf_length_y=length.numpy(), offset_y=offset.numpy())


if __name__ == "__main__":
    write_default_y_tables()
    print(f"wrote {DEFAULT_Y_TABLES}")
