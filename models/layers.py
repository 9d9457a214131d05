"""Convolutional building blocks of HPCM, with the official module names and shapes."""

from __future__ import annotations

import torch
from torch import nn


def conv1x1(in_ch: int, out_ch: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=bias)


def conv2x2_down(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=2, stride=2)


def conv4x4_down(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1)


def deconv2x2_up(in_ch: int, out_ch: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)


def deconv4x4_up(in_ch: int, out_ch: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1)


class PartialConv3x3(nn.Module):
    """3x3 convolution on the first ``partial`` channels; the rest pass through (FasterNet's PConv)."""

    def __init__(self, channels: int, partial: int) -> None:
        super().__init__()
        self.split = (partial, channels - partial)
        self.pconv = nn.Conv2d(partial, partial, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head, tail = torch.split(x, self.split, dim=1)
        return torch.cat((self.pconv(head), tail), dim=1)


class PConvRB(nn.Module):
    """Residual block: partial 3x3 conv, 1x1 up to mlp_ratio*C, LeakyReLU, 1x1 back."""

    def __init__(self, channels: int, partial_ratio: int = 4, mlp_ratio: int = 4) -> None:
        super().__init__()
        hidden = channels * mlp_ratio
        self.branch = nn.Sequential(
            PartialConv3x3(channels, channels // partial_ratio),
            conv1x1(channels, hidden),
            nn.LeakyReLU(),
            conv1x1(hidden, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class DWConvRB(nn.Module):
    """Residual block: depth-wise 3x3 conv, 1x1 up to mlp_ratio*C, LeakyReLU, 1x1 back."""

    def __init__(self, channels: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        hidden = channels * mlp_ratio
        self.branch = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
            conv1x1(channels, hidden),
            nn.LeakyReLU(),
            conv1x1(hidden, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of an NCHW map, without transposing it (parameter names as nn.LayerNorm)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in float32 also for float16 activations (fp16 exports): squared deviations
        # beyond 256 would overflow float16. For float32 and float64 input both casts are no-ops.
        wide = x.to(torch.promote_types(x.dtype, torch.float32))
        mean = wide.mean(dim=1, keepdim=True)
        var = (wide - mean).pow(2).mean(dim=1, keepdim=True)
        normed = ((wide - mean) * torch.rsqrt(var + self.eps)).to(x.dtype)
        return normed * self.weight[:, None, None] + self.bias[:, None, None]
