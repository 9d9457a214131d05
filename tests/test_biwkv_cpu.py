"""The compiled CPU Bi-WKV (biwkv_cpu.cpp, behind ONNX Runtime's native custom op) in both modes against the
float64 scans of reference.py."""

from __future__ import annotations

import pytest
import torch

from hpcm.config import cxx_compiler
from hpcm.native import NativeBuildError
from hpcm.plugins.biwkv import CONTRACT, WKV_MODES

pytestmark = pytest.mark.skipif(cxx_compiler() is None, reason="needs a C++ compiler (g++, c++ or clang++; or CXX)")


def _inputs(B: int, C: int, T: int, seed: int, absolute_decay: bool = False):
    """Like the RWKV cells' inputs: w = decay / T, u = boost / T, k in [-4, 4], v in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    decay = torch.rand(C, generator=g) * 6 - 3
    w = 0.1 * decay.abs() if absolute_decay else decay / T
    u = (torch.rand(C, generator=g) * 4 - 2) / T
    return w, u, torch.rand(B, C, T, generator=g) * 8 - 4, torch.rand(B, C, T, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def biwkv_cpu():
    from hpcm.plugins.biwkv.cpu import biwkv_cpu

    try:
        biwkv_cpu(*_inputs(1, 1, 1, seed=0))
    except NativeBuildError as exc:
        pytest.fail(str(exc))
    return biwkv_cpu


@pytest.mark.parametrize("mode", CONTRACT.modes)
@pytest.mark.parametrize("T", [1, 7, 32, 33, 1536, 34560])
@pytest.mark.parametrize("B", [1, 4])
def test_matches_float64_scan(biwkv_cpu, B, T, mode):
    if B * T > 40000:
        pytest.skip("the float64 reference loops over T in Python; long rows run at B=1")
    w, u, k, v = _inputs(B, 32, T, seed=T)
    y = biwkv_cpu(w, u, k, v, mode)
    assert y.dtype == torch.float32 and y.shape == k.shape
    # The scan state is double: only the final rounding to float32 remains.
    assert (y.double() - WKV_MODES[mode].reference(w, u, k, v)).abs().max() <= 1e-6


@pytest.mark.parametrize("mode", CONTRACT.modes)
def test_float16_rounds_the_float32_result_once(biwkv_cpu, mode):
    w, u, k, v = _inputs(2, 8, 300, seed=1)
    k16, v16 = k.half(), v.half()
    expected = biwkv_cpu(w, u, k16.float(), v16.float(), mode).half()
    got = biwkv_cpu(w, u, k16, v16, mode)
    assert got.dtype == torch.float16 and torch.equal(got, expected)
    tiny = biwkv_cpu(w, u, k16, (v * 1e-6).half(), mode)  # results below float16's smallest normal
    assert torch.equal(tiny, biwkv_cpu(w, u, k16.float(), (v * 1e-6).half().float(), mode).half())
    assert (tiny != 0).any() and tiny.abs().max() < 6.1e-5


def test_large_exponent_range(biwkv_cpu):
    w, u, k, v = _inputs(1, 4, 5000, seed=2, absolute_decay=True)
    y = biwkv_cpu(w, u, k, v)
    assert torch.isfinite(y).all()
    assert (y.double() - WKV_MODES["exact"].reference(w, u, k, v)).abs().max() <= 1e-6
    # The vrwkv mode at such rates is ill-conditioned (biwkv_kernel_test.cpp says why); its wide range is k's.
    w, u, k, v = _inputs(1, 4, 5000, seed=2)
    y = biwkv_cpu(w, u, k * 11, v, "vrwkv")
    assert torch.isfinite(y).all()
    assert (y.double() - WKV_MODES["vrwkv"].reference(w, u, k * 11, v)).abs().max() <= 1e-6


@pytest.mark.parametrize("mode", CONTRACT.modes)
def test_threads_do_not_change_the_result(biwkv_cpu, mode):
    w, u, k, v = _inputs(2, 64, 2000, seed=3)
    assert torch.equal(biwkv_cpu(w, u, k, v, mode, threads=1), biwkv_cpu(w, u, k, v, mode, threads=3))


def test_bad_shapes_and_modes_are_refused(biwkv_cpu):
    w, u, k, v = _inputs(1, 4, 10, seed=4)
    with pytest.raises(ValueError, match="w and u"):
        biwkv_cpu(w[:3], u, k, v)
    with pytest.raises(ValueError, match="k and v"):
        biwkv_cpu(w, u, k, v[..., :5])
    with pytest.raises(ValueError, match="unknown mode 'chunky'"):
        biwkv_cpu(w, u, k, v, "chunky")
