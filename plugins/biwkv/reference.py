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


# ---------------------------------------------------------------------------------------------------
# The "vrwkv" mode: the formula of Vision-RWKV's public CUDA kernel (``biwkv4_cuda_new.cu``, also
# LALIC's and the LIC-HPCM-LALIC fork's, whose checkpoints were trained with it). It cuts T into
# VRWKV_CHUNKS chunks of L = ceil(T / VRWKV_CHUNKS) tokens and runs the exact recurrences from chunk
# starts whose states are off by one decay step. Written out, for t in the chunk [s, s + L), the
# weight of exp(k_n) in y_t's numerator (times v_n) and denominator is
#
#     n < s or n > t:  exp(-|t-n| w)                      (the exact formula has |t-n| - 1)
#     s <= n < t:      exp(-(t-n-1) w) + [n > s] (exp(-w) - 1) exp((t+1-n) w)
#     n = t:           exp(u) + [t > s] (1 - exp(w))
#
# For T <= 32 every token starts a chunk, so every weight is exp(-|t-n| w). The kernel also adds
# 1e-6 times its running scale to the denominator; that term is left out of the mode (its effect on
# model outputs is float32 noise: README, "Bi-WKV modes").
VRWKV_CHUNKS = 32


def vrwkv_chunk_length(T: int) -> int:
    return (T + VRWKV_CHUNKS - 1) // VRWKV_CHUNKS


def biwkv_vrwkv_direct(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The vrwkv mode's y (B, C, T) in float64 term by term from the weights above (O(T^2))."""
    w, u, k, v = _as_float64(w, u, k, v)
    T = k.shape[-1]
    t = torch.arange(T, dtype=torch.float64, device=k.device)
    start = (t // vrwkv_chunk_length(T)) * vrwkv_chunk_length(T)
    row, col, row_start = t[:, None], t[None, :], start[:, None]
    wc, uc = w[0][:, None, None], u[0][:, None, None]  # (C, 1, 1)
    weight = torch.exp(-wc * (row - col).abs())
    weight = torch.where((col >= row_start) & (col < row), torch.exp(-wc * (row - col - 1)), weight)
    spurious = (col > row_start) & (col < row)
    weight = weight + torch.where(spurious, (torch.exp(-wc) - 1) * torch.exp(wc * (row + 1 - col)), 0.0)
    diagonal = torch.exp(uc) + torch.where(row > row_start, 1 - torch.exp(wc), 0.0)
    weight = torch.where(row == col, diagonal, weight)  # (C, T, T)
    scaled = torch.exp(k - k.amax(-1, keepdim=True))  # (B, C, T)
    num = torch.einsum("ctn,bcn->bct", weight, scaled * v)
    return num / torch.einsum("ctn,bcn->bct", weight, scaled)


def biwkv_vrwkv_scan(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     eps: float = 0.0) -> torch.Tensor:
    """The vrwkv mode's y (B, C, T) in float64 by the kernel's own recurrences, chunk by chunk.

    Each chunk keeps (log-offset, numerator, denominator) sums like the kernel's lanes; chunk
    summaries are combined across chunks with their decays, then each chunk is rescanned from its
    entering state. Any exponent range works. ``eps`` > 0 adds the kernel's denominator term
    (1e-6 in the kernel) for measuring its effect; the mode itself has none.
    """
    w, u, k, v = _as_float64(w, u, k, v)
    T = k.shape[-1]
    length = vrwkv_chunk_length(T)
    starts = range(0, T, length)
    empty = torch.full_like(k[..., 0], -torch.inf)

    def add(state, exponent, value):
        """state + exp(exponent) * (value, 1), rescaled to the new largest exponent."""
        offset, num, den = state
        top = torch.maximum(offset, exponent)
        old = torch.where(torch.isinf(offset), torch.zeros_like(top), torch.exp(offset - top))
        new = torch.exp(exponent - top)
        return top, old * num + new * value, old * den + new

    def shifted(state, log_factor):
        offset, num, den = state
        return offset + log_factor, num, den

    zero = (empty, torch.zeros_like(empty), torch.zeros_like(empty))
    # Per chunk: forward sum_{n in chunk} exp(k_n - (n - s) w) and backward
    # sum_{n in chunk} exp(k_n - (e - n) w) with e the chunk's end (exclusive).
    forward, backward = [], []
    for s in starts:
        e = min(s + length, T)
        f, b = zero, zero
        for n in range(s, e):
            f = add(f, k[..., n] - (n - s) * w[0], v[..., n])
            b = add(b, k[..., n] - (e - n) * w[0], v[..., n])
        forward.append(f)
        backward.append(b)
    y = torch.empty_like(k)
    for j, s in enumerate(starts):
        # entering past: sum_{n < s} exp(k_n - (s - n) w); future: sum_{n > s} exp(k_n - (n - s) w)
        past = zero
        for i in range(j):
            offset, num, den = shifted(backward[i], -(j - i - 1) * length * w[0])
            past = _merge(past, (offset, num, den))
        future = zero
        for i in range(j, len(starts)):
            future = _merge(future, shifted(forward[i], -(i - j) * length * w[0]))
        future = _remove(future, k[..., s], v[..., s])
        for t in range(s, min(s + length, T)):
            diagonal = u[0] + k[..., t]
            top = torch.maximum(torch.maximum(past[0], future[0]), diagonal)

            def scale(offset):
                return torch.where(torch.isinf(offset), torch.zeros_like(top), torch.exp(offset - top))

            a, f, d = scale(past[0]), scale(future[0]), torch.exp(diagonal - top)
            num = a * past[1] + f * future[1] + d * v[..., t]
            den = a * past[2] + f * future[2] + d + eps
            y[..., t] = num / den
            # the kernel's updates: past <- past * exp(-w) + exp(k_t) v_t;
            # future <- (future - exp(k_{t+1}) v_{t+1}) * exp(w)
            past = add(shifted(past, -w[0]), k[..., t], v[..., t])
            if t + 1 < T:
                future = shifted(_remove(future, k[..., t + 1], v[..., t + 1]), w[0])
    return y


def _merge(a, b):
    """Sum of two (offset, num, den) states."""
    top = torch.maximum(a[0], b[0])

    def scale(offset):
        return torch.where(torch.isinf(offset), torch.zeros_like(offset), torch.exp(offset - top))

    sa, sb = scale(a[0]), scale(b[0])
    return top, sa * a[1] + sb * b[1], sa * a[2] + sb * b[2]


def _remove(state, exponent, value):
    """state - exp(exponent) * (value, 1) (the kernel's future update subtracts)."""
    offset, num, den = state
    top = torch.maximum(offset, exponent)
    old = torch.where(torch.isinf(offset), torch.zeros_like(top), torch.exp(offset - top))
    new = torch.exp(exponent - top)
    return top, old * num - new * value, old * den - new
