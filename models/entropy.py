"""HPCM's generalized Gaussian entropy model (GGM) for likelihoods during training and evaluation.

Buffer names (``beta``, ``scale_lower_bound.bound``, ``likelihood_lower_bound.bound``) follow the
official ``entropy_estimation`` module so that its checkpoints load.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _LowerBoundFn(torch.autograd.Function):
    """max(x, bound) whose gradient still flows when it pushes x upwards (as in CompressAI)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, bound)
        return torch.max(x, bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, bound = ctx.saved_tensors
        passes = (x >= bound) | (grad < 0)
        return passes * grad, None


class LowerBound(nn.Module):
    def __init__(self, bound: float) -> None:
        super().__init__()
        self.register_buffer("bound", torch.tensor([float(bound)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export() or not torch.is_grad_enabled():
            return torch.max(x, self.bound)
        return _LowerBoundFn.apply(x, self.bound)


class _GGMCdf(torch.autograd.Function):
    """Standardised GGM CDF; its gradient is the density (gammainc has none for its argument)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, beta: float) -> torch.Tensor:
        magnitude = x.abs().pow(beta)
        ctx.save_for_backward(magnitude)
        ctx.beta = beta
        return 0.5 * (1 + torch.sign(x) * torch.special.gammainc(torch.full_like(x, 1 / beta), magnitude))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (magnitude,) = ctx.saved_tensors
        beta = ctx.beta
        density = torch.exp(-magnitude - math.lgamma(1 / beta)) * beta / 2
        return grad * density, None


def ggm_cdf(x: torch.Tensor, beta: float) -> torch.Tensor:
    return _GGMCdf.apply(x, beta)


class GeneralizedGaussian(nn.Module):
    """Likelihood of integer-spaced values under a zero-mean GGM with per-element scale."""

    def __init__(self, beta: float = 1.5, scale_bound: float = 0.12, likelihood_bound: float = 1e-9) -> None:
        super().__init__()
        self.scale_lower_bound = LowerBound(scale_bound)
        self.likelihood_lower_bound = LowerBound(likelihood_bound)
        self.register_buffer("beta", torch.tensor([beta]))

    @property
    def beta_value(self) -> float:
        return float(self.beta)

    @property
    def scale_bound(self) -> float:
        return float(self.scale_lower_bound.bound)

    def forward(self, values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        scales = self.scale_lower_bound(scales)
        beta = self.beta_value
        likelihood = ggm_cdf((values + 0.5) / scales, beta) - ggm_cdf((values - 0.5) / scales, beta)
        return self.likelihood_lower_bound(likelihood)
