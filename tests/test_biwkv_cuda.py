"""The CUDA kernel of hpcm::biwkv in both modes against the float64 scans of reference.py (needs a GPU)."""

from __future__ import annotations

import pytest
import torch

from hpcm.plugins.biwkv import CONTRACT, WKV_MODES, biwkv_eager, biwkv_scan
from hpcm.plugins.biwkv import cuda as biwkv_cuda

MODES = tuple(CONTRACT.modes)

requires_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU and a CUDA build of PyTorch (torch.cuda.is_available() is False)",
)


def gpu(test):
    return pytest.mark.gpu(requires_cuda(test))


# Outputs are weighted means of v in [-1, 1], so one absolute-plus-relative bound fits all rows.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-3}


def make_inputs(B: int, C: int, T: int, dtype: torch.dtype, seed: int, wide_range: str = ""):
    """CPU tensors like the RWKV cells produce: w = decay / T, u = boost / T, k in [-4, 4], v in [-1, 1].

    ``wide_range`` makes exponents span far beyond float32 (only a rescaling scan stays finite), as the
    kernel's self-test does: for "exact" w is a positive 0.1-scale rate per token (thousands over a
    row); for "vrwkv", which is ill-conditioned at such rates (biwkv_kernel_test.cpp says why), k spans
    [-45, 45].
    """
    g = torch.Generator().manual_seed(seed)
    decay = torch.rand(C, generator=g) * 6 - 3
    w = 0.1 * decay.abs() if wide_range == "exact" else decay / T
    u = (torch.rand(C, generator=g) * 4 - 2) / T
    key_range = 45.0 if wide_range == "vrwkv" else 4.0
    k = ((torch.rand(B, C, T, generator=g) * 2 - 1) * key_range).to(dtype)
    v = (torch.rand(B, C, T, generator=g) * 2 - 1).to(dtype)
    return w, u, k, v


def check_against_reference(extension, w, u, k, v, mode: str) -> None:
    w, u, k, v = (x.cuda() for x in (w, u, k, v))
    # The float64 scans step through T one token at a time; on the GPU each step costs the same few
    # kernel launches whatever B and C are, which keeps the T = 34560, B = 4 rows to seconds.
    expected = WKV_MODES[mode].reference(w, u, k, v)
    y = extension.forward(w, u, k, v, MODES.index(mode))
    assert y.dtype == k.dtype and y.shape == k.shape and y.is_contiguous()
    tol = TOLERANCE[k.dtype]
    torch.testing.assert_close(y.double(), expected, rtol=tol, atol=tol)


def _cases():
    for mode in MODES:
        for dtype in (torch.float32, torch.float16):
            for T in (1, 7, 32, 33, 1536, 34560):
                for C in (32, 640):
                    for B in (1, 4):
                        yield pytest.param(B, C, T, dtype, mode,
                                           id=f"{mode}-B{B}-C{C}-T{T}-{str(dtype).removeprefix('torch.')}")


@pytest.fixture(scope="module")
def extension():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU and a CUDA build of PyTorch (torch.cuda.is_available() is False)")
    return biwkv_cuda.load_cuda_kernel()


@gpu
@pytest.mark.parametrize(("B", "C", "T", "dtype", "mode"), list(_cases()))
def test_matches_float64_scan(extension, B, C, T, dtype, mode):
    check_against_reference(extension, *make_inputs(B, C, T, dtype, seed=T * 7 + C + B), mode)


@gpu
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("T", [2049, 5000])
def test_large_exponent_range(extension, T, dtype, mode):
    check_against_reference(extension, *make_inputs(2, 8, T, dtype, seed=T, wide_range=mode), mode)


@gpu
@pytest.mark.parametrize("mode", MODES)
def test_custom_op_dispatches_to_kernel(extension, mode):
    w, u, k, v = (x.cuda() for x in make_inputs(2, 16, 3000, torch.float32, seed=1))
    assert torch.equal(torch.ops.hpcm.biwkv(w, u, k, v, mode), extension.forward(w, u, k, v, MODES.index(mode)))


@gpu
def test_non_contiguous_inputs(extension):
    w, u, k, v = make_inputs(2, 16, 300, torch.float32, seed=2)
    k_strided = k.cuda().transpose(1, 2).contiguous().transpose(1, 2)
    v_strided = v.cuda().transpose(1, 2).contiguous().transpose(1, 2)
    assert not k_strided.is_contiguous()
    y = torch.ops.hpcm.biwkv(w.cuda(), u.cuda(), k_strided, v_strided, "exact")
    torch.testing.assert_close(y.cpu().double(), biwkv_scan(w, u, k, v), rtol=1e-5, atol=1e-5)


@gpu
def test_runs_on_current_stream(extension):
    w, u, k, v = (x.cuda() for x in make_inputs(1, 32, 9000, torch.float16, seed=3))
    expected = extension.forward(w, u, k, v, MODES.index("vrwkv"))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        y = extension.forward(w, u, k, v, MODES.index("vrwkv"))
    stream.synchronize()
    assert torch.equal(y, expected)


@gpu
@pytest.mark.parametrize("mode", MODES)
def test_float64_keeps_vectorised_path(extension, mode):
    w, u, k, v = (x.cuda() for x in make_inputs(1, 4, 100, torch.float64, seed=4))
    torch.testing.assert_close(torch.ops.hpcm.biwkv(w, u, k, v, mode), WKV_MODES[mode].eager(w, u, k, v))
    assert mode != "exact" or torch.equal(WKV_MODES[mode].eager(w, u, k, v), biwkv_eager(w, u, k, v))


@gpu
@pytest.mark.parametrize("mode", MODES)
def test_empty_batch(extension, mode):
    w, u, k, v = (x.cuda() for x in make_inputs(0, 4, 50, torch.float32, seed=5))
    assert extension.forward(w, u, k, v, MODES.index(mode)).shape == (0, 4, 50)


def test_load_without_cuda_explains(monkeypatch):
    monkeypatch.setattr(biwkv_cuda, "_extension", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs a CUDA build of PyTorch"):
        biwkv_cuda.load_cuda_kernel()


@gpu
@pytest.mark.parametrize("variant", ["phase2", "phase2-vrwkv"])
def test_eager_model_on_gpu_uses_kernel_and_matches_cpu(extension, monkeypatch, variant):
    """phase2's whole forward on GPU (its RWKV cells through the kernel, in either mode) against the same
    model on CPU."""
    from hpcm.models import build_model
    from hpcm.codec.codec import deterministic_precision

    calls = []
    kernel = extension.forward
    monkeypatch.setattr(extension, "forward", lambda *args: calls.append(args[-1]) or kernel(*args))
    model = build_model(variant, seed=0).eval()
    x = torch.rand(1, 3, 256, 384, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = model(x, training=False)
        with deterministic_precision(torch.device("cuda")):
            got = model.cuda()(x.cuda(), training=False)
    assert set(calls) == {MODES.index(model.spec.wkv)}, "the RWKV cells did not reach the CUDA kernel in their mode"
    assert (got["x_hat"].cpu() - expected["x_hat"]).abs().max() < 1e-4
    for name in ("y", "z"):
        assert (got["likelihoods"][name].cpu() - expected["likelihoods"][name]).abs().max() < 1e-4


@gpu
def test_eager_runner_on_gpu_runs_the_kernel(extension):
    """The codec's eager runner on a GPU registers the kernel itself and says so in its fingerprint."""
    from hpcm.models import build_model
    from hpcm.runtime.runners.eager import EagerRunner

    with EagerRunner(build_model("phase2", seed=0), device="cuda") as runner:
        assert runner.fingerprint.endswith("/wkv-kernel"), runner.fingerprint
