"""The Bi-WKV operator as a ``torch.library`` custom op (``hpcm::biwkv``).

Layout (B, C, T) with T = H*W in raster order, as fixed in ``contract.json``: the RWKV cells work on
NCHW feature maps, so k and v arrive as ``(B, C, H, W).flatten(2)`` without transposes.

Implementations:

* ``biwkv_closed_form``: vectorised cumulative-sum form of ``biwkv.md`` in plain differentiable
  PyTorch ops (CPU and GPU). Each direction's sum is kept as a log-weight plus a weighted mean of v,
  so only the denominators' cumulative sums can underflow. That happens once the exponent spread
  ``max - min`` of ``k_i +- i*w`` over a row (at most range(k) + |w|*(T-1), i.e. range(k) + |decay| in
  the cells) leaves the dtype's exponent range. ``CLOSED_FORM_SPREAD_LIMIT`` bounds it per dtype.
* ``biwkv_eager``: the guard. Picks float32 closed form when the spread allows, float64 closed form
  when float32 would underflow, and the exact float64 scan of ``reference.py`` beyond that. It never
  returns a result from outside a closed form's validity range.
* ``biwkv``: the public entry, the custom op ``hpcm::biwkv`` in one of the contract's modes: on CPU the
  mode's guarded evaluation (``biwkv_eager`` for ``exact``, ``vrwkv.biwkv_vrwkv`` for ``vrwkv``), on
  CUDA the kernel once ``cuda.load_cuda_kernel`` registered it. Under ONNX export it emits one custom
  node with the contract's op_type, domain and attributes, the mode among them.

Inputs in float16 are computed in float32 and the result is cast back to k's dtype.
"""

from __future__ import annotations

from typing import Callable

import torch

from .contract import CONTRACT
from .reference import biwkv_scan

# Largest exponent spread per compute dtype for which the closed form's cumulative sums stay normal
# numbers with room for T terms: float32 underflows below exp(-87), float64 below exp(-708).
CLOSED_FORM_SPREAD_LIMIT = {torch.float32: 60.0, torch.float64: 600.0}

# (w, u, k, v) -> y: a vectorised form or a float64 reference of one Bi-WKV formula.
ClosedForm = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _exclusive_cumsum(x: torch.Tensor, reverse: bool) -> torch.Tensor:
    """sum over i < t (or i > t when reverse) along the last axis."""
    # Shift the inclusive sum instead of subtracting x from it: the subtraction cancels
    # catastrophically where the current term dominates the earlier ones.
    if reverse:
        x = x.flip(-1)
    total = torch.nn.functional.pad(torch.cumsum(x, dim=-1)[..., :-1], (1, 0))
    return total.flip(-1) if reverse else total


def _direction(
    exponent: torch.Tensor, prefactor: torch.Tensor, v: torch.Tensor, reverse: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-weight and weighted mean of v over one direction.

    exponent: k_i +- i*w (B, C, T); prefactor: the log factor that turns the row-normalised sum into
    the true one at each t. Returns (log of the direction's denominator, numerator / denominator).
    """
    row_max = exponent.amax(dim=-1, keepdim=True)
    weights = torch.exp(exponent - row_max)
    den = _exclusive_cumsum(weights, reverse)
    num = _exclusive_cumsum(weights * v, reverse)
    nonempty = den > 0
    safe_den = torch.where(nonempty, den, torch.ones_like(den))
    log_weight = torch.where(nonempty, torch.log(safe_den) + prefactor + row_max, torch.full_like(den, -torch.inf))
    mean = torch.where(nonempty, num / safe_den, torch.zeros_like(num))
    return log_weight, mean


def exponent_spread(w: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Largest spread of k_i + i*w or k_i - i*w over a row: the closed form's validity measure."""
    T = k.shape[-1]
    ramp = torch.arange(T, device=k.device, dtype=torch.float32) * w.detach().float()[None, :, None]
    kf = k.detach().float()
    spread_past = (kf + ramp).amax(-1) - (kf + ramp).amin(-1)
    spread_future = (kf - ramp).amax(-1) - (kf - ramp).amin(-1)
    return torch.maximum(spread_past, spread_future).amax()


def biwkv_closed_form(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Vectorised Bi-WKV in the dtype of k (float32 or float64), differentiable, no validity check."""
    T = k.shape[-1]
    dtype = k.dtype
    position = torch.arange(T, device=k.device, dtype=dtype)
    wc = w.to(dtype)[None, :, None]
    uc = u.to(dtype)[None, :, None]
    # past at t:   sum_{i<t} exp(-(t-1-i) w + k_i) = exp((1-t) w) * sum_{i<t} exp(k_i + i w)
    # future at t: sum_{i>t} exp(-(i-t-1) w + k_i) = exp((1+t) w) * sum_{i>t} exp(k_i - i w)
    log_past, mean_past = _direction(k + position * wc, (1 - position) * wc, v, reverse=False)
    log_future, mean_future = _direction(k - position * wc, (1 + position) * wc, v, reverse=True)
    log_diagonal = uc + k
    top = torch.maximum(torch.maximum(log_past, log_future), log_diagonal)
    a_past = torch.exp(log_past - top)
    a_future = torch.exp(log_future - top)
    a_diagonal = torch.exp(log_diagonal - top)
    return (a_past * mean_past + a_future * mean_future + a_diagonal * v) / (a_past + a_future + a_diagonal)


def check_inputs(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if k.dim() != 3 or k.shape != v.shape:
        raise ValueError(f"biwkv: k and v must both be (B, C, T); got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.dtype != v.dtype or k.dtype not in (torch.float32, torch.float16, torch.float64):
        raise ValueError(f"biwkv: k and v must share a float dtype (float32/float16); got {k.dtype}, {v.dtype}")
    C = k.shape[1]
    if w.shape != (C,) or u.shape != (C,):
        raise ValueError(f"biwkv: w and u must be ({C},); got {tuple(w.shape)} and {tuple(u.shape)}")
    if k.shape[2] < 1:
        raise ValueError("biwkv: T must be at least 1")


def guarded_evaluation(closed_form: ClosedForm, scan: ClosedForm, w: torch.Tensor, u: torch.Tensor,
                       k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``closed_form`` in float32 (float64 for float64 input) while the exponent spread allows,
    in float64 beyond that, and the float64 ``scan`` past the float64 range; y in k's dtype."""
    check_inputs(w, u, k, v)
    spread = float(exponent_spread(w, k))
    compute = torch.float64 if k.dtype == torch.float64 else torch.float32
    if spread > CLOSED_FORM_SPREAD_LIMIT[compute]:
        compute = torch.float64
    if spread > CLOSED_FORM_SPREAD_LIMIT[torch.float64] or not torch.isfinite(torch.tensor(spread)):
        y = scan(w, u, k, v)
    else:
        y = closed_form(w.to(compute), u.to(compute), k.to(compute), v.to(compute))
    return y.to(k.dtype)


def biwkv_eager(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Guarded vectorised evaluation (float32 accumulation at least); differentiable."""
    return guarded_evaluation(biwkv_closed_form, biwkv_scan, w, u, k, v)


def eager_form(mode: str) -> ClosedForm:
    """The guarded vectorised evaluation of ``mode`` (``modes.WKV_MODES``), what the op runs where no
    kernel is registered. Imported here, not at the top: ``modes`` builds its table from this module."""
    from .modes import WKV_MODES

    if mode not in WKV_MODES:
        raise ValueError(f"biwkv: unknown mode {mode!r}; the op computes {', '.join(WKV_MODES)}")
    return WKV_MODES[mode].eager


@torch.library.custom_op(CONTRACT.torch_op, mutates_args=())
def _biwkv_op(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str) -> torch.Tensor:
    return eager_form(mode)(w, u, k, v).contiguous()


@_biwkv_op.register_fake
def _biwkv_fake(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str) -> torch.Tensor:
    torch._check(k.dim() == 3, lambda: "biwkv: k must be (B, C, T)")
    torch._check(w.shape[0] == k.shape[1], lambda: "biwkv: w must be (C,)")
    return torch.empty_like(k, memory_format=torch.contiguous_format)


@torch.library.custom_op(CONTRACT.torch_op + "_backward", mutates_args=())
def _biwkv_backward_op(
    w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad_y: torch.Tensor, mode: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # Vector-Jacobian product of the same guarded vectorised evaluation. torch.func is used because
    # autograd recording is switched off inside custom-op kernels.
    _, vjp = torch.func.vjp(eager_form(mode), w, u, k, v)
    return tuple(g.contiguous() for g in vjp(grad_y.to(k.dtype)))


@_biwkv_backward_op.register_fake
def _biwkv_backward_fake(w, u, k, v, grad_y, mode):
    return tuple(torch.empty_like(x, memory_format=torch.contiguous_format) for x in (w, u, k, v))


def _setup_context(ctx, inputs, output) -> None:
    *tensors, ctx.mode = inputs
    ctx.save_for_backward(*tensors)


def _backward(ctx, grad_y):
    return *_biwkv_backward_op(*ctx.saved_tensors, grad_y, ctx.mode), None


_biwkv_op.register_autograd(_backward, setup_context=_setup_context)


def biwkv(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str = CONTRACT.default_mode
          ) -> torch.Tensor:
    """Bi-WKV of ``contract.json`` in ``mode`` (one of ``CONTRACT.modes``): y (B, C, T) from w, u (C,)
    and k, v (B, C, T).

    In eager mode this dispatches to ``torch.ops.hpcm.biwkv`` (whose CUDA kernel, once built,
    replaces the vectorised form on GPU). During ``torch.onnx.export`` it becomes exactly one node
    ``CONTRACT.domain::CONTRACT.op_type`` with the plugin attributes TensorRT's parser reads and the mode.
    """
    attributes = CONTRACT.node_attributes(mode)
    if torch.onnx.is_in_onnx_export():
        return torch.onnx.ops.symbolic(
            f"{CONTRACT.domain}::{CONTRACT.op_type}",
            (w, u, k, v),
            attributes,
            dtype=k.dtype,
            shape=k.shape,
            version=CONTRACT.opset_version,
        )
    return _biwkv_op(w, u, k, v, mode)
