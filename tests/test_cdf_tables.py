"""Quantized GGM tables: layout, determinism, fidelity to the GGM, bucket indexes."""

from __future__ import annotations

import math

import pytest
import torch

from hpcm.models import build_model
from hpcm.models.cdf_tables import (
    _ggm_cdf,
    default_scale_table,
    ggm_upper_quantile,
    quantize_pmf,
    quantized_cdf_tables,
    scale_indexes,
)


def test_default_scale_table_is_log_spaced() -> None:
    t = default_scale_table()
    assert t.shape == (60,) and t.dtype == torch.float32
    assert t[0].item() == pytest.approx(0.12, rel=1e-6) and t[-1].item() == pytest.approx(64.0, rel=1e-6)
    steps = torch.diff(torch.log(t.double()))
    assert torch.allclose(steps, steps.mean().expand_as(steps), rtol=1e-5)


def test_quantile_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for beta in (1.0, 1.5, 2.0):
        assert ggm_upper_quantile(5e-7, beta) == pytest.approx(-stats.gennorm.ppf(5e-7, beta), rel=1e-9)


def test_table_layout_and_determinism() -> None:
    table = default_scale_table()
    cdf, length, offset = quantized_cdf_tables(table)
    again = quantized_cdf_tables(table)
    assert all(torch.equal(a, b) for a, b in zip((cdf, length, offset), again))
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


def test_quantized_pmf_is_close_to_the_ggm() -> None:
    cdf, length, offset = quantized_cdf_tables(default_scale_table())
    for i in (0, 10, 30, 59):
        scale = default_scale_table()[i].double()
        k = torch.arange(int(offset[i]), -int(offset[i]) + 1, dtype=torch.float64)
        p = _ggm_cdf((k + 0.5) / scale, 1.5) - _ggm_cdf((k - 0.5) / scale, 1.5)
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
    pmf = torch.tensor([1.0 - 1e-12, 1e-13, 0.0, 9e-13], dtype=torch.float64)
    freq = quantize_pmf(pmf)
    assert freq.sum() == 65536 and (freq >= 1).all()
    with pytest.raises(ValueError):
        quantize_pmf(torch.ones(70000))


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
    cdf, length, offset = quantized_cdf_tables(default_scale_table())
    assert torch.equal(model.quantized_cdf_y, cdf) and torch.equal(model.cdf_length_y, length)
    assert torch.equal(model.offset_y, offset)
    assert model.quantized_cdf_z.shape[0] == model.scales_hyper.numel()
