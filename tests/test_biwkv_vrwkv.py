"""The Bi-WKV's vrwkv mode (the formula of Vision-RWKV's CUDA kernel): its two float64 references agree,
the vectorised form matches them in float32 and float64, and the guard takes over where float32 cannot."""

from __future__ import annotations

import pytest
import torch

from hpcm.plugins.biwkv import CONTRACT, WKV_MODES, biwkv_scan, biwkv_vrwkv, biwkv_vrwkv_closed_form
from hpcm.plugins.biwkv.reference import biwkv_vrwkv_direct, biwkv_vrwkv_scan

TOKENS = (1, 2, 7, 32, 33, 64, 96, 100, 385)


def inputs(T: int, seed: int = 0, k_scale: float = 3.0, decay_scale: float = 5.0, B: int = 2, C: int = 6):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(B, C, T, generator=g) * k_scale
    v = torch.randn(B, C, T, generator=g)
    w = torch.randn(C, generator=g) * decay_scale / T
    u = torch.randn(C, generator=g) / T
    return w, u, k, v


@pytest.mark.parametrize("T", TOKENS)
def test_references_agree(T):
    """The weights written out (direct) and the kernel's own recurrences (scan) give the same y."""
    w, u, k, v = inputs(T)
    assert torch.allclose(biwkv_vrwkv_scan(w, u, k, v), biwkv_vrwkv_direct(w, u, k, v), rtol=0, atol=1e-12)


@pytest.mark.parametrize("T", TOKENS)
def test_closed_form_matches_reference(T):
    w, u, k, v = inputs(T, seed=1)
    reference = biwkv_vrwkv_direct(w, u, k, v)
    as_float64 = biwkv_vrwkv_closed_form(w.double(), u.double(), k.double(), v.double())
    assert (as_float64 - reference).abs().max() <= 1e-12
    assert (biwkv_vrwkv(w, u, k, v).double() - reference).abs().max() <= 1e-5


def test_up_to_32_tokens_every_distance_is_whole():
    """For T <= 32 each token starts a chunk: weights exp(-|t-n| w) everywhere, exp(u) on the diagonal."""
    w, u, k, v = inputs(20, seed=2)
    t = torch.arange(20, dtype=torch.float64)
    weight = torch.exp(-w.double()[:, None, None] * (t[:, None] - t[None, :]).abs())
    weight = torch.where(torch.eye(20, dtype=torch.bool), torch.exp(u.double())[:, None, None], weight)
    e = torch.exp(k.double())
    expected = torch.einsum("ctn,bcn->bct", weight, e * v.double()) / torch.einsum("ctn,bcn->bct", weight, e)
    assert torch.allclose(biwkv_vrwkv_direct(w, u, k, v), expected, rtol=0, atol=1e-12)


def test_differs_from_the_exact_formula_beyond_float32():
    """What the mode exists for: at s1 sizes the kernel's formula is far from the exact one."""
    w, u, k, v = inputs(96, seed=3, decay_scale=1.0)
    assert (biwkv_vrwkv_direct(w, u, k, v) - biwkv_scan(w, u, k, v)).abs().max() > 1e-3


def test_kernel_eps_is_a_float32_sized_change():
    w, u, k, v = inputs(100, seed=4)
    with_eps = biwkv_vrwkv_scan(w, u, k, v, eps=1e-6)
    assert 0 < (with_eps - biwkv_vrwkv_scan(w, u, k, v)).abs().max() <= 1e-5


def test_guard_leaves_float32_for_large_spreads():
    """Spreads beyond float32's closed form go to float64, beyond float64's to the scan; y stays right."""
    for k_scale, decay_scale in ((30.0, 60.0), (400.0, 400.0)):
        w, u, k, v = inputs(64, seed=5, k_scale=k_scale, decay_scale=decay_scale)
        got = biwkv_vrwkv(w, u, k, v)
        assert torch.isfinite(got).all()
        assert (got.double() - biwkv_vrwkv_scan(w, u, k, v)).abs().max() <= 1e-5 * k_scale


def test_gradients_match_the_reference():
    w, u, k, v = (x.double().requires_grad_() for x in inputs(40, seed=6, C=3, B=1))
    torch.autograd.gradcheck(biwkv_vrwkv_closed_form, (w, u, k, v))
    grads = torch.autograd.grad(biwkv_vrwkv_closed_form(w, u, k, v).sum(), (w, u, k, v))
    expected = torch.autograd.grad(biwkv_vrwkv_direct(w, u, k, v).sum(), (w, u, k, v))
    for got, want in zip(grads, expected):
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-9)


def test_modes_table():
    """Every mode is a mode of the contract's op (its custom node, kernel and plugins)."""
    assert tuple(WKV_MODES) == CONTRACT.modes
    assert all(mode.custom_node for mode in WKV_MODES.values())
    assert WKV_MODES["vrwkv"].reference is biwkv_vrwkv_scan and WKV_MODES["vrwkv"].eager is biwkv_vrwkv
