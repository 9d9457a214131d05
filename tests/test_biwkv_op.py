import pytest
import torch

from hpcm.plugins.biwkv import (CONTRACT, WKV_MODES, biwkv, biwkv_closed_form, biwkv_direct, biwkv_scan,
                                exponent_spread)
from hpcm.plugins.biwkv.op import CLOSED_FORM_SPREAD_LIMIT


def _inputs(B, C, T, decay_scale=5.0, k_scale=3.0, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(C, generator=g) * decay_scale / T
    u = torch.randn(C, generator=g) * decay_scale / T
    k = (torch.randn(B, C, T, generator=g) * k_scale).to(dtype)
    v = torch.randn(B, C, T, generator=g).to(dtype)
    return w, u, k, v


@pytest.mark.parametrize("T", [1, 2, 3, 17, 64])
def test_scan_reference_equals_direct_formula(T):
    w, u, k, v = _inputs(2, 5, T)
    torch.testing.assert_close(biwkv_scan(w, u, k, v), biwkv_direct(w, u, k, v), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", CONTRACT.modes)
@pytest.mark.parametrize("T", [1, 2, 3, 17, 33, 256, 1536])
@pytest.mark.parametrize("B,C", [(1, 8), (3, 5)])
def test_op_matches_float64_reference(T, B, C, mode):
    w, u, k, v = _inputs(B, C, T, seed=T + C)
    y = biwkv(w, u, k, v, mode)
    assert y.dtype == torch.float32 and y.shape == (B, C, T)
    ref = WKV_MODES[mode].reference(w, u, k, v)
    scale = v.abs().max().item()
    assert (y.double() - ref).abs().max().item() <= 1e-5 * scale


def test_one_token_is_its_value():
    w, u, k, v = _inputs(2, 4, 1)
    torch.testing.assert_close(biwkv(w, u, k, v), v)


@pytest.mark.parametrize("decay", [-300.0, -80.0, 80.0, 300.0])
def test_large_decay_is_exact(decay):
    T = 256
    w = torch.full((4,), decay / T)
    _, u, k, v = _inputs(1, 4, T)
    ref = biwkv_scan(w, u, k, v)
    assert (biwkv(w, u, k, v).double() - ref).abs().max().item() <= 1e-5


def test_float32_closed_form_would_fail_where_the_guard_switches():
    """The guard matters: outside the float32 validity range the bare closed form goes wrong."""
    T = 512
    w = torch.full((2,), 200.0 / T)
    u = torch.zeros(2)
    k = torch.zeros(1, 2, T)
    k[..., : T // 2] = -60.0
    v = torch.randn(1, 2, T)
    assert float(exponent_spread(w, k)) > CLOSED_FORM_SPREAD_LIMIT[torch.float32]
    ref = biwkv_scan(w, u, k, v)
    bare = biwkv_closed_form(w, u, k, v).double()
    assert not torch.allclose(bare, ref, atol=1e-3) or not torch.isfinite(bare).all()
    assert (biwkv(w, u, k, v).double() - ref).abs().max().item() <= 1e-5


def test_extreme_range_falls_back_to_scan():
    T = 64
    w, u, k, v = _inputs(1, 3, T)
    k = k * 400.0
    assert float(exponent_spread(w, k)) > CLOSED_FORM_SPREAD_LIMIT[torch.float64]
    y = biwkv(w, u, k, v)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), biwkv_scan(w, u, k, v), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", CONTRACT.modes)
def test_float16_inputs_accumulate_in_float32(mode):
    w, u, k, v = _inputs(2, 8, 300, dtype=torch.float16)
    y = biwkv(w, u, k, v, mode)
    assert y.dtype == torch.float16
    ref = WKV_MODES[mode].reference(w, u, k.float(), v.float())
    assert (y.double() - ref).abs().max().item() <= 2e-3


@pytest.mark.parametrize("mode", CONTRACT.modes)
def test_opcheck(mode):
    w, u, k, v = _inputs(2, 3, 40)
    result = torch.library.opcheck(torch.ops.hpcm.biwkv.default, (w, u, k, v, mode))
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("mode", CONTRACT.modes)
def test_gradcheck_small(mode):
    w, u, k, v = (t.double().requires_grad_() for t in _inputs(1, 3, 40, decay_scale=2.0, k_scale=1.0))
    assert torch.autograd.gradcheck(lambda *tensors: biwkv(*tensors, mode=mode), (w, u, k, v))


def test_bad_shapes_raise():
    w, u, k, v = _inputs(1, 4, 5)
    with pytest.raises(ValueError, match="B, C, T"):
        biwkv(w, u, k[0], v[0])
    with pytest.raises(ValueError, match=r"\(4,\)"):
        biwkv(w[:3], u, k, v)
    with pytest.raises(ValueError, match="no mode 'chunky'.*exact, vrwkv"):
        biwkv(w, u, k, v, mode="chunky")


def test_contract_is_single_source():
    assert CONTRACT.torch_op == "hpcm::biwkv"
    assert CONTRACT.input_names == ("w", "u", "k", "v")
    assert CONTRACT.layout == "BCT"
    assert hasattr(torch.ops.hpcm, "biwkv")
    assert CONTRACT.modes == ("exact", "vrwkv") and CONTRACT.default_mode == "exact"
    assert CONTRACT.node_attributes("vrwkv") == {"plugin_version": CONTRACT.plugin_version,
                                                 "plugin_namespace": CONTRACT.plugin_namespace, "mode": "vrwkv"}
    assert CONTRACT.plugin_version not in CONTRACT.earlier_plugin_versions


@pytest.mark.parametrize("mode", CONTRACT.modes)
def test_op_computes_each_mode(mode):
    """The one op in each mode: its float64 reference, and the mode's own guarded evaluation."""
    w, u, k, v = _inputs(2, 5, 100, seed=7)
    y = biwkv(w, u, k, v, mode)
    assert (y.double() - WKV_MODES[mode].reference(w, u, k, v)).abs().max() <= 1e-5
    assert torch.equal(y, WKV_MODES[mode].eager(w, u, k, v))
    assert torch.equal(WKV_MODES[mode].evaluate(w, u, k, v), y)
