"""HPCM-Base analysis/synthesis transforms g_a, g_s, h_a, h_s (official module names: ``<name>.branch.<i>``)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import PConvRB, conv2x2_down, conv4x4_down, deconv2x2_up, deconv4x4_up


class _Branch(nn.Module):
    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.branch = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x)


def _blocks(channels: int, count: int) -> list[nn.Module]:
    return [PConvRB(channels) for _ in range(count)]


class AnalysisTransform(_Branch):
    """g_a: image (3 ch) to y (M ch) at stride 16."""

    def __init__(self, M: int = 320) -> None:
        super().__init__(
            conv4x4_down(3, 96), *_blocks(96, 2),
            conv2x2_down(96, 192), *_blocks(192, 2),
            conv2x2_down(192, 384), *_blocks(384, 4),
            conv2x2_down(384, M),
        )


class SynthesisTransform(_Branch):
    """g_s: y_hat (M ch) back to the image."""

    def __init__(self, M: int = 320) -> None:
        super().__init__(
            deconv2x2_up(M, 384), *_blocks(384, 4),
            deconv2x2_up(384, 192), *_blocks(192, 2),
            deconv2x2_up(192, 96), *_blocks(96, 2),
            deconv4x4_up(96, 3),
        )


class HyperAnalysis(_Branch):
    """h_a: y to z (N ch) at a further stride 4."""

    def __init__(self, M: int = 320, N: int = 256) -> None:
        super().__init__(
            PConvRB(M), conv2x2_down(M, N), *_blocks(N, 3), conv2x2_down(N, N),
        )


class HyperSynthesis(_Branch):
    """h_s: z_hat to 2M channels, [scales | means] at the resolution of y."""

    def __init__(self, M: int = 320, N: int = 256) -> None:
        super().__init__(
            deconv2x2_up(N, N), *_blocks(N, 3), deconv2x2_up(N, 2 * M), PConvRB(2 * M),
        )
