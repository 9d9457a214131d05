"""Context cells of HPCM's progressive context model: the official cross-attention cell and the
bi-directional RWKV cells of the variants.

RWKV blocks work on NCHW maps throughout: 1x1 convolutions stand for the Linear projections and the
Bi-WKV op reads (B, C, T) directly, so no transposes are needed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hpcm.plugins.biwkv import WKV_MODES

from .layers import ChannelLayerNorm, conv1x1
from .seeding import portable_normal_


class CrossAttentionCell(nn.Module):
    """Official HPCM cell: windowed multi-head attention, q from x_t, k and v from h_prev, plus conv_out(x_t)."""

    def __init__(self, input_dim: int, hidden_dim: int, window_size: int, kernel_size: int = 1, num_heads: int = 32) -> None:
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError("hidden_dim must be a multiple of num_heads")
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        self.window_size = window_size
        pad = kernel_size // 2
        self.conv_q = nn.Conv2d(input_dim, hidden_dim, kernel_size, padding=pad)
        self.conv_k = nn.Conv2d(hidden_dim, hidden_dim, kernel_size, padding=pad)
        self.conv_v = nn.Conv2d(hidden_dim, hidden_dim, kernel_size, padding=pad)
        self.conv_out = nn.Conv2d(hidden_dim, hidden_dim, kernel_size, padding=pad)

    def _windows(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        p = self.window_size
        x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(-1, C, p, p)

    def forward(self, x_t: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x_t.shape
        p = self.window_size
        xw, hw = self._windows(x_t), self._windows(h_prev)
        n = xw.shape[0]
        q = self.conv_q(xw).reshape(n, self.num_heads, self.head_dim, p * p).transpose(2, 3)
        k = self.conv_k(hw).reshape(n, self.num_heads, self.head_dim, p * p)
        v = self.conv_v(hw).reshape(n, self.num_heads, self.head_dim, p * p).transpose(2, 3)
        attn = torch.softmax(torch.matmul(q, k) / math.sqrt(self.head_dim), dim=-1)
        out = torch.matmul(attn, v).transpose(2, 3).reshape(n, self.hidden_dim, p, p)
        out = out.reshape(B, H // p, W // p, self.hidden_dim, p, p).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(B, self.hidden_dim, H, W) + self.conv_out(x_t)


class OmniShift(nn.Module):
    """LALIC's token shift: alpha-weighted identity + depth-wise 1x1, 3x3 and 5x5 convolutions.

    The four branches are always applied as one depth-wise 5x5 convolution whose kernel is computed
    from the parameters, so training and inference share one code path and no re-parameterisation
    state lives in the module. (The fork keeps that kernel as a ``conv5x5_reparam`` weight which it
    recomputes from the branches on its first evaluation call; checkpoints drop it on loading.)
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1x1 = nn.Conv2d(dim, dim, 1, groups=dim, bias=False)
        self.conv3x3 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.conv5x5 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim, bias=False)
        self.alpha = nn.Parameter(torch.tensor([1.0, 0.1, 0.1, 0.1]))

    def fused_weight(self) -> torch.Tensor:
        identity = F.pad(torch.ones_like(self.conv1x1.weight), (2, 2, 2, 2))
        return (
            self.alpha[0] * identity
            + self.alpha[1] * F.pad(self.conv1x1.weight, (2, 2, 2, 2))
            + self.alpha[2] * F.pad(self.conv3x3.weight, (1, 1, 1, 1))
            + self.alpha[3] * self.conv5x5.weight
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.fused_weight(), padding=2, groups=x.shape[1])


class SpatialMix(nn.Module):
    """RWKV spatial mix: y = output(sigmoid(r) * BiWKV(decay/T, boost/T, k, v)) over the H*W tokens.

    ``mode`` names the Bi-WKV formula (``hpcm.plugins.biwkv.WKV_MODES``: "exact" or "vrwkv").
    ``wkv_form`` says how it is computed: ``"op"``, the contract's op in that mode (its guarded evaluation
    on CPU, the CUDA kernel where registered, one custom node under ONNX export), or ``"closed_form"``,
    the mode's cumulative-sum form in standard ops (what ``hpcm-export --wkv decomposed`` sets on the
    copy it traces).
    """

    wkv_form = "op"

    def __init__(self, dim: int, mode: str = "exact") -> None:
        super().__init__()
        self.mode = WKV_MODES[mode]
        self.shift = OmniShift(dim)
        self.key = conv1x1(dim, dim, bias=False)
        self.value = conv1x1(dim, dim, bias=False)
        self.receptance = conv1x1(dim, dim, bias=False)
        self.output = conv1x1(dim, dim, bias=False)
        # Spread of per-channel decay rates (negative: weight grows with distance, bounded by
        # exp(|decay|) since the op receives decay / T); boost starts neutral.
        self.decay = nn.Parameter(torch.linspace(-4.0, 4.0, dim))
        self.boost = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        tokens = H * W
        x = self.shift(x)
        k = self.key(x).flatten(2)
        v = self.value(x).flatten(2)
        mixed = self._wkv(self.decay / tokens, self.boost / tokens, k, v).reshape(B, C, H, W)
        return self.output(torch.sigmoid(self.receptance(x)) * mixed)

    def _wkv(self, w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.wkv_form == "closed_form":
            return self.mode.closed_form(w.to(k.dtype), u.to(k.dtype), k, v)
        return self.mode.evaluate(w, u, k, v)


class ChannelMix(nn.Module):
    """RWKV channel mix: value(relu(key(x))^2) gated by sigmoid(receptance(x))."""

    def __init__(self, dim: int, hidden_rate: int) -> None:
        super().__init__()
        self.shift = OmniShift(dim)
        self.key = conv1x1(dim, hidden_rate * dim, bias=False)
        self.value = conv1x1(hidden_rate * dim, dim, bias=False)
        self.receptance = conv1x1(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shift(x)
        return torch.sigmoid(self.receptance(x)) * self.value(torch.relu(self.key(x)).square())


# How an RWKV block adds its two mixes to the stream (VariantSpec.rwkv_block; RWKVBlock says how).
RWKV_WIRINGS = ("post_ln", "pre_ln")


class RWKVBlock(nn.Module):
    """Spatial mix then channel mix, each scaled per channel by a gamma, in one of two wirings:

    * ``post_ln`` (the LIC-HPCM-LALIC fork's blocks): ``x + gamma * (LN(mix(x)) - x)``. At gamma = 1
      (its initial value) the normalised mix replaces x. Its blocks start as the fork's do: decay,
      boost and the OmniShift alphas drawn from N(0, 1).
    * ``pre_ln`` (LALIC's own block, the ``-preln`` variants): ``x + gamma * mix(LN(x))``, the
      identity path always open; decay spread over -4..4, boost 0, alphas (1, .1, .1, .1).
    """

    def __init__(self, dim: int, hidden_rate: int, wiring: str = "post_ln", wkv: str = "exact") -> None:
        super().__init__()
        if wiring not in RWKV_WIRINGS:
            raise ValueError(f"unknown RWKV block wiring {wiring!r}; known: {', '.join(RWKV_WIRINGS)}")
        self.wiring = wiring
        self.ln1 = ChannelLayerNorm(dim)
        self.spatial_mix = SpatialMix(dim, wkv)
        self.ln2 = ChannelLayerNorm(dim)
        self.channel_mix = ChannelMix(dim, hidden_rate)
        self.gamma1 = nn.Parameter(torch.ones(dim))
        self.gamma2 = nn.Parameter(torch.ones(dim))
        if wiring == "post_ln":
            with torch.no_grad():
                for parameter in (self.spatial_mix.decay, self.spatial_mix.boost, self.spatial_mix.shift.alpha,
                                  self.channel_mix.shift.alpha):
                    portable_normal_(parameter)

    @property
    def decay(self) -> nn.Parameter:
        return self.spatial_mix.decay

    @property
    def boost(self) -> nn.Parameter:
        return self.spatial_mix.boost

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gamma1, gamma2 = self.gamma1[:, None, None], self.gamma2[:, None, None]
        if self.wiring == "pre_ln":
            x = x + gamma1 * self.spatial_mix(self.ln1(x))
            return x + gamma2 * self.channel_mix(self.ln2(x))
        x = x + gamma1 * (self.ln1(self.spatial_mix(x)) - x)
        return x + gamma2 * (self.ln2(self.channel_mix(x)) - x)


class RWKVContextCell(nn.Module):
    """Drop-in replacement of CrossAttentionCell: fuse (x_t, h_prev), one RWKV block, project."""

    def __init__(self, dim: int, hidden_rate: int, wiring: str = "post_ln", wkv: str = "exact") -> None:
        super().__init__()
        self.input_proj = conv1x1(2 * dim, dim)
        self.block = RWKVBlock(dim, hidden_rate, wiring, wkv)
        self.output_proj = conv1x1(dim, dim)

    @property
    def decay(self) -> nn.Parameter:
        return self.block.decay

    @property
    def boost(self) -> nn.Parameter:
        return self.block.boost

    def forward(self, x_t: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        return self.output_proj(self.block(self.input_proj(torch.cat((x_t, h_prev), dim=1))))


class RWKVFusionNet(nn.Module):
    """Replacement of a context_net conv1x1: RWKV blocks then a 1x1 projection."""

    def __init__(self, dim: int, num_blocks: int, hidden_rate: int, wiring: str = "post_ln",
                 wkv: str = "exact") -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(RWKVBlock(dim, hidden_rate, wiring, wkv) for _ in range(num_blocks)))
        self.out_proj = conv1x1(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.blocks(x))
