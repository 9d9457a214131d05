"""Float64 references of the Bi-WKV formula: the oracles every implementation is checked against.

``biwkv_scan`` is the stable two-direction scan of ``biwkv.md`` (any T >= 1, any exponent range);
``biwkv_direct`` evaluates the formula term by term in O(T^2) and exists to check the scan itself.
Neither shares code with the fast implementations in ``op.py``.
"""

from __future__ import annotations

import torch


def _as_float64(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    return w.double()[None, :], u.double()[None, :], k.double(), v.double()


def biwkv_direct(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """y of shape (B, C, T) in float64 from the definition, materialising every (t, i) exponent."""
    w, u, k, v = _as_float64(w, u, k, v)
    T = k.shape[-1]
    t = torch.arange(T, dtype=torch.float64, device=k.device)
    dist = (t[:, None] - t[None, :]).abs()  # (T, T): |t - i|
    exponent = -(dist - 1)[None, None] * w[..., None, None] + k[:, :, None, :]  # (B, C, t, i)
    diagonal = u[..., None] + k  # (B, C, T)
    eye = torch.eye(T, dtype=torch.bool, device=k.device)
    exponent = torch.where(eye, diagonal[:, :, :, None].expand_as(exponent), exponent)
    weights = torch.exp(exponent - exponent.amax(dim=-1, keepdim=True))
    return (weights * v[:, :, None, :]).sum(-1) / weights.sum(-1)


def _directional_scan(w: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """Running sums over tokens before t: log-offset, numerator and denominator per token.

    State after token t represents sum_{i<t} exp(-(t-1-i) w + k_i) (v_i or 1) as exp(offset) * (num, den).
    Each step multiplies the old sum by exp(-w) and adds exp(k_t) (v_t or 1), rescaling to the new
    running maximum so that nothing overflows or underflows.
    """
    B, C, T = k.shape
    offset = torch.full((B, C), -torch.inf, dtype=torch.float64, device=k.device)
    num = torch.zeros((B, C), dtype=torch.float64, device=k.device)
    den = torch.zeros_like(num)
    offsets, nums, dens = [], [], []
    for t in range(T):
        offsets.append(offset)
        nums.append(num)
        dens.append(den)
        decayed = offset - w
        new_offset = torch.maximum(decayed, k[:, :, t])
        old_scale = torch.where(torch.isinf(decayed), torch.zeros_like(decayed), torch.exp(decayed - new_offset))
        new_scale = torch.exp(k[:, :, t] - new_offset)
        num = old_scale * num + new_scale * v[:, :, t]
        den = old_scale * den + new_scale
        offset = new_offset
    return torch.stack(offsets, -1), torch.stack(nums, -1), torch.stack(dens, -1)


def biwkv_scan(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """y of shape (B, C, T) in float64 by a stable forward and backward scan."""
    w, u, k, v = _as_float64(w, u, k, v)
    past_offset, past_num, past_den = _directional_scan(w, k, v)
    future_offset, future_num, future_den = (
        x.flip(-1) for x in _directional_scan(w, k.flip(-1), v.flip(-1))
    )
    diagonal_offset = u[..., None] + k
    top = torch.maximum(torch.maximum(past_offset, future_offset), diagonal_offset)

    def scaled(offset: torch.Tensor) -> torch.Tensor:
        return torch.where(torch.isinf(offset), torch.zeros_like(offset), torch.exp(offset - top))

    past_scale, future_scale, diagonal_scale = scaled(past_offset), scaled(future_offset), scaled(diagonal_offset)
    num = past_scale * past_num + future_scale * future_num + diagonal_scale * v
    den = past_scale * past_den + future_scale * future_den + diagonal_scale
    return num / den
