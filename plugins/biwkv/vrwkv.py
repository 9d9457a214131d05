"""The Bi-WKV's "vrwkv" mode: the formula Vision-RWKV's public CUDA kernel computes.

Checkpoints of the LIC-HPCM-LALIC fork were trained with that kernel, whose chunk starts are off by
one decay step (its weights are written out in ``reference.py``). On a fork model the difference
from the exact formula is far above float32 noise (README, "Bi-WKV modes"), so the variants that
deploy those weights (``phaseN-vrwkv``) compute this mode.

``biwkv_vrwkv_closed_form`` evaluates it with cumulative sums in standard, differentiable ops (what
ONNX export traces); ``biwkv_vrwkv`` guards it as ``op.biwkv_eager`` guards the exact form: float32
while the exponent spread allows, float64 beyond, and the float64 kernel-recurrence scan of
``reference.py`` past that. Layout (B, C, T) as the op's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .op import guarded_evaluation
from .reference import VRWKV_CHUNKS, biwkv_vrwkv_scan


def _shifted_cumsum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum over the positions before each one along ``dim`` (a shifted inclusive sum: no cancellation)."""
    inclusive = torch.cumsum(x, dim=dim)
    head = torch.zeros_like(x.narrow(dim, 0, 1))
    return torch.cat((head, inclusive.narrow(dim, 0, x.shape[dim] - 1)), dim=dim)


def _chunked(x: torch.Tensor, length) -> torch.Tensor:  # noqa: ANN001 - int or a symbolic size
    """(B, C, T) zero-padded to VRWKV_CHUNKS * length tokens, as (B, C, VRWKV_CHUNKS, length)."""
    padded = F.pad(x, (0, VRWKV_CHUNKS * length - x.shape[-1]))
    return padded.reshape(x.shape[0], x.shape[1], VRWKV_CHUNKS, length)


def _unchunked(x: torch.Tensor, tokens) -> torch.Tensor:  # noqa: ANN001 - int or a symbolic size
    return x.flatten(-2)[..., :tokens]


def _log_weight_and_mean(den: torch.Tensor, num: torch.Tensor, log_prefactor: torch.Tensor):
    """A part's log(prefactor * den) and num / den; -inf and 0 where the part is empty."""
    nonempty = den > 0
    safe_den = torch.where(nonempty, den, torch.ones_like(den))
    log_weight = torch.where(nonempty, torch.log(safe_den) + log_prefactor, torch.full_like(den, -torch.inf))
    return log_weight, torch.where(nonempty, num / safe_den, torch.zeros_like(num))


def biwkv_vrwkv_closed_form(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The vrwkv mode vectorised in the dtype of k (float32 or float64), differentiable, unguarded.

    With g_n = exp(k_n + n w) and h_n = exp(k_n - n w) (each relative to its row maximum) and s the
    start of t's chunk, the parts of y_t are
      past:     exp((1-t) w) * (exp(-w) * sum_{n<s} g_n + sum_{s<=n<t} g_n)
      future:   exp(t w) * sum_{n>t} h_n
      restart:  (exp(-w) - 1) * exp((t+1) w) * sum_{s<n<=t} h_n   (the chunk restart's leftover)
      current:  exp(u + k_t)
    each a positive sum except the restart's coefficient, so no sum is a difference of sums.
    """
    batch, channels, tokens = k.shape
    dtype = k.dtype
    length = (tokens + VRWKV_CHUNKS - 1) // VRWKV_CHUNKS
    position = torch.arange(tokens, device=k.device, dtype=dtype)
    wc = w.to(dtype)[None, :, None]
    uc = u.to(dtype)[None, :, None]
    decay_step = torch.exp(-wc)[..., None]  # (1, C, 1, 1) against chunked tensors

    past_exponent = k + position * wc
    past_max = past_exponent.amax(-1, keepdim=True)
    g = torch.exp(past_exponent - past_max)
    future_exponent = k - position * wc
    future_max = future_exponent.amax(-1, keepdim=True)
    h = torch.exp(future_exponent - future_max)

    def past_sum(x: torch.Tensor) -> torch.Tensor:
        chunks = _chunked(x, length)
        earlier_chunks = _shifted_cumsum(chunks.sum(-1, keepdim=True), dim=-2)
        return _unchunked(decay_step * earlier_chunks + _shifted_cumsum(chunks, dim=-1), tokens)

    def future_sum(x: torch.Tensor) -> torch.Tensor:
        return _shifted_cumsum(x.flip(-1), dim=-1).flip(-1)

    def restart_sum(x: torch.Tensor) -> torch.Tensor:
        chunks = _chunked(x, length)
        after_start = torch.cumsum(chunks[..., 1:], dim=-1)
        return _unchunked(torch.cat((torch.zeros_like(chunks[..., :1]), after_start), dim=-1), tokens)

    parts = [
        _log_weight_and_mean(past_sum(g), past_sum(g * v), (1 - position) * wc + past_max),
        _log_weight_and_mean(future_sum(h), future_sum(h * v), position * wc + future_max),
        _log_weight_and_mean(restart_sum(h), restart_sum(h * v), (position + 1) * wc + future_max),
    ]
    log_current = uc + k
    top = log_current
    for log_weight, _ in parts:
        top = torch.maximum(top, log_weight)
    coefficients = (1.0, 1.0, torch.exp(-wc) - 1)
    current = torch.exp(log_current - top)
    num, den = current * v, current
    for coefficient, (log_weight, mean) in zip(coefficients, parts):
        weight = coefficient * torch.exp(log_weight - top)
        num = num + weight * mean
        den = den + weight
    return num / den


def biwkv_vrwkv(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The vrwkv mode, guarded: y (B, C, T) in k's dtype, differentiable."""
    return guarded_evaluation(biwkv_vrwkv_closed_form, biwkv_vrwkv_scan, w, u, k, v)
