"""Quantized GGM tables: the rounding of the exact GGM (checked against mpmath for every row), the same
integers on every machine, the layout, fidelity to the GGM, bucket indexes."""

from __future__ import annotations

import math
from decimal import Context, Decimal, localcontext

import numpy as np
import pytest
import torch

from hpcm.codec.tables import EntropyTables
from hpcm.models import build_model
from hpcm.models.cdf_tables import (
    DEFAULT_QUANTIZATION,
    GGMQuantization,
    _Unsettled,
    default_scale_table,
    default_y_tables,
    ggm_upper_quantile,
    quantize_pmf,
    quantized_cdf_tables,
    scale_indexes,
    scale_table_from_definition,
)
from hpcm.models.entropy import ggm_cdf

mpmath = pytest.importorskip("mpmath")

# The tables digest of the seeded models (every z scale 1.0, the default y tables): the same on every
# machine because the tables are the rounding of the exact GGM. A change here makes every stream of a
# model without stored tables undecodable: only ever on purpose, with a version bump.
SEEDED_TABLES_DIGEST = "61b2375250184ec6"


def _mp_row(scale: float, quantization: GGMQuantization = DEFAULT_QUANTIZATION) -> list[int]:
    """One table row computed independently with mpmath (50 digits), quantized by the shared rule."""
    with mpmath.workdps(50):
        a, beta = mpmath.mpf(1) / quantization.beta, mpmath.mpf(quantization.beta)
        target = 2 * mpmath.mpf(quantization.tail_mass / 2)
        multiplier = mpmath.findroot(
            lambda x: 1 - mpmath.gammainc(a, 0, x ** beta, regularized=True) - target, 5.0)
        s = mpmath.mpf(max(scale, quantization.scale_bound))
        center = int(mpmath.ceil(s * multiplier))
        inside = [mpmath.gammainc(a, 0, ((j + mpmath.mpf("0.5")) / s) ** beta, regularized=True)
                  for j in range(center + 1)]
        half = [(inside[j] - inside[j - 1]) / 2 for j in range(1, center + 1)]
        pmf = [*reversed(half), inside[0], *half, 1 - inside[center]]
        freq = quantize_pmf([Decimal(mpmath.nstr(p, 50, strip_zeros=False)) for p in pmf],
                            quantization.precision, digits=50)
    return [0, *np.cumsum(freq).tolist()]


def test_default_scale_table_is_the_float32_rounding_of_its_definition() -> None:
    t = default_scale_table()
    assert t.shape == (60,) and t.dtype == torch.float32
    assert np.array_equal(t.numpy(), scale_table_from_definition())
    with mpmath.workdps(50):
        low, high = mpmath.log(mpmath.mpf("0.12")), mpmath.log(mpmath.mpf(64))
        exact = [mpmath.exp(low + i * (high - low) / 59) for i in range(60)]
    # the float64 value of each entry is far from a float32 tie, so float32(float64) is the exact rounding
    assert np.array_equal(t.numpy(), np.array([float(v) for v in exact], dtype=np.float32))


def test_quantile_matches_scipy_and_mpmath() -> None:
    stats = pytest.importorskip("scipy.stats")
    for beta in (1.0, 1.5, 2.0):
        assert ggm_upper_quantile(5e-7, beta) == pytest.approx(-stats.gennorm.ppf(5e-7, beta), rel=1e-9)
    with mpmath.workdps(40):
        a = mpmath.mpf(2) / 3
        exact = mpmath.findroot(lambda x: 1 - mpmath.gammainc(a, 0, x ** 1.5, regularized=True) - 1e-6, 5.0)
    assert ggm_upper_quantile(5e-7, 1.5) == pytest.approx(float(exact), rel=1e-15)


def test_every_default_y_row_is_the_rounding_of_the_exact_ggm() -> None:
    cdf, length, offset = default_y_tables()
    for i, scale in enumerate(default_scale_table().tolist()):
        assert cdf[i, : length[i]].tolist() == _mp_row(scale), f"row {i} (scale {scale})"


def test_shipped_y_tables_are_what_the_code_computes() -> None:
    shipped = default_y_tables()
    computed = quantized_cdf_tables(default_scale_table())
    assert all(torch.equal(a, b) for a, b in zip(shipped, computed))


@pytest.mark.parametrize("quantization", [DEFAULT_QUANTIZATION, GGMQuantization(beta=1.0, scale_bound=0.11)],
                         ids=["beta1.5", "beta1.0"])
def test_z_rows_of_spread_scales_are_the_rounding_of_the_exact_ggm(quantization) -> None:
    # scales a trained z entropy model holds (exactly representable, so the reference sees the same ones)
    scales = torch.tensor([0.05, 0.11, 0.3125, 1.0, 2.71875, 7.5, 23.25])
    cdf, length, _ = quantized_cdf_tables(scales, quantization)
    for i, scale in enumerate(scales.tolist()):
        assert cdf[i, : length[i]].tolist() == _mp_row(scale, quantization), f"scale {scale}"


def test_table_layout() -> None:
    table = default_scale_table()
    cdf, length, offset = default_y_tables()
    assert cdf.dtype == length.dtype == offset.dtype == torch.int32
    multiplier = ggm_upper_quantile(5e-7, 1.5)
    centers = torch.ceil(table.double().clamp_min(0.12) * multiplier).to(torch.int32)
    assert torch.equal(offset, -centers)
    assert torch.equal(length, 2 * centers + 3)
    assert cdf.shape == (60, int(length.max()))
    for i in range(60):
        row = cdf[i, : length[i]].long()
        assert row[0] == 0 and row[-1] == 65536
        assert (torch.diff(row) >= 1).all()
        assert (cdf[i, length[i]:] == 0).all()


def test_seeded_model_tables_have_the_pinned_digest(phase2) -> None:
    assert EntropyTables.from_model(phase2).digest.hex() == SEEDED_TABLES_DIGEST


def test_quantized_pmf_is_close_to_the_ggm() -> None:
    cdf, length, offset = default_y_tables()
    for i in (0, 10, 30, 59):
        scale = default_scale_table()[i].double()
        k = torch.arange(int(offset[i]), -int(offset[i]) + 1, dtype=torch.float64)
        p = ggm_cdf((k + 0.5) / scale, 1.5) - ggm_cdf((k - 0.5) / scale, 1.5)
        q = torch.diff(cdf[i, : length[i]].double())[:-1] / 65536.0
        # cross-entropy overhead of coding with q instead of p, in bits per symbol; at scale 64 the
        # ~200 far-tail symbols that must keep a count of 1 cost about 0.05 % of the entropy
        entropy = -(p * torch.log2(p.clamp_min(1e-300))).sum().item()
        overhead = (p * (torch.log2(p.clamp_min(1e-300)) - torch.log2(q))).sum().item()
        assert overhead < 1e-3 * max(entropy, 1.0)


def test_scales_below_the_bound_share_the_first_row() -> None:
    cdf_a, _, _ = quantized_cdf_tables(torch.tensor([0.01, 0.12]))
    assert torch.equal(cdf_a[0], cdf_a[1])


def test_quantize_pmf_keeps_every_symbol() -> None:
    freq = quantize_pmf([1.0 - 1e-12, 1e-13, 0.0, 9e-13])
    assert sum(freq) == 65536 and min(freq) >= 1
    with pytest.raises(ValueError):
        quantize_pmf([1.0] * 70000)


def test_mirrored_ties_go_to_the_lower_symbol() -> None:
    # three equal shares of 65536/3: one count is missing and goes to the first
    assert quantize_pmf([Decimal(1), Decimal(1), Decimal(1)]) == [21846, 21845, 21845]


def test_a_decision_within_the_arithmetics_error_is_not_taken() -> None:
    """A share closer to an integer than the working precision can tell is settled with more digits."""
    with localcontext(Context(prec=80)):
        near_integer = Decimal(3) / 65536 + Decimal("1e-35")
        pmf = [near_integer, 1 - near_integer]
    with pytest.raises(_Unsettled):
        quantize_pmf(pmf, settle=True)
    assert quantize_pmf(pmf, digits=80, settle=True) == [3, 65533]


def test_scale_indexes_match_the_official_comparison() -> None:
    table = default_scale_table()
    gen = torch.Generator().manual_seed(0)
    scales = torch.exp(torch.randn(10000, generator=gen) * 2.0)
    scales = torch.cat([scales, table, torch.tensor([0.0, -1.0, 1e9, math.inf])])
    expected = (scales[:, None] > table[:-1]).sum(-1)
    got = scale_indexes(scales.reshape(2, -1, 2), table).reshape(-1)
    assert got.dtype == torch.int32
    assert torch.equal(got.long(), expected)
    assert scale_indexes(torch.tensor([math.nan]), table).item() == 0
    assert torch.equal(scale_indexes(scales.double(), table).long(), expected)


def test_model_update_stores_these_tables() -> None:
    model = build_model("phase2", seed=0)
    model.update()
    cdf, length, offset = default_y_tables()
    assert torch.equal(model.quantized_cdf_y, cdf) and torch.equal(model.cdf_length_y, length)
    assert torch.equal(model.offset_y, offset)
    assert torch.equal(model.scale_table, default_scale_table())
    assert model.quantized_cdf_z.shape[0] == model.scales_hyper.numel()
