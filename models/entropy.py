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
    """Standardised GGM CDF; under ONNX export from elementwise standard ops (``gammainc`` has no
    ONNX lowering), with the same value to float32 precision."""
    if torch.onnx.is_in_onnx_export():
        return 0.5 * (1 + torch.sign(x) * gammainc_standard_ops(1.0 / beta, x.abs().pow(beta)))
    return _GGMCdf.apply(x, beta)


def gammainc_standard_ops(a: float, x: torch.Tensor, iterations: int = 48) -> torch.Tensor:
    """Regularised lower incomplete gamma P(a, x) for a constant a > 0, from elementwise ops only.

    Series for x < a + 1, Lentz continued fraction for Q above (Numerical Recipes 6.2), with a
    fixed number of terms so the graph is static. float32-accurate for the GGM's a = 1/beta.
    """
    x = x.clamp_min(0.0)
    log_prefactor_const = -math.lgamma(a)
    safe_x = torch.where(x > 0, x, torch.ones_like(x))
    # series: P = e^{-x} x^a / Gamma(a+1) * sum_n x^n / ((a+1)...(a+n))
    xs = torch.minimum(safe_x, torch.full_like(x, a + 1.0))
    term = torch.full_like(x, 1.0 / a)
    total = term
    for n in range(1, iterations):
        term = term * xs / (a + n)
        total = total + term
    log_pre_s = a * torch.log(xs) - xs + log_prefactor_const
    p_series = torch.exp(log_pre_s) * total
    # continued fraction for Q(a, x), x >= a + 1
    xc = torch.maximum(safe_x, torch.full_like(x, a + 1.0))
    tiny = 1e-30
    b = xc + 1.0 - a
    c = torch.full_like(x, 1.0 / tiny)
    d = 1.0 / b
    h = d
    for i in range(1, iterations):
        an = -i * (i - a)
        b = b + 2.0
        d = an * d + b
        d = torch.where(d.abs() < tiny, torch.full_like(d, tiny), d)
        c = b + an / c
        c = torch.where(c.abs() < tiny, torch.full_like(c, tiny), c)
        d = 1.0 / d
        h = h * d * c
    log_pre_c = a * torch.log(xc) - xc + log_prefactor_const
    p_cf = 1.0 - torch.exp(log_pre_c) * h
    p = torch.where(safe_x < a + 1.0, p_series, p_cf)
    return torch.where(x > 0, p, torch.zeros_like(x))


class GeneralizedGaussian(nn.Module):
    """Likelihood of integer-spaced values under a zero-mean GGM with per-element scale."""

    def __init__(self, beta: float = 1.5, scale_bound: float = 0.12, likelihood_bound: float = 1e-9) -> None:
        super().__init__()
        self.scale_lower_bound = LowerBound(scale_bound)
        self.likelihood_lower_bound = LowerBound(likelihood_bound)
        self.register_buffer("beta", torch.tensor([beta]))
        # beta is a constant of the model; read as a Python number once (here and on every load)
        # so that traced graphs take it as a constant instead of a data-dependent value.
        self._beta = float(beta)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._beta = float(self.beta)

    @property
    def beta_value(self) -> float:
        return self._beta

    @property
    def scale_bound(self) -> float:
        return float(self.scale_lower_bound.bound)

    def forward(self, values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        # At least float32 whatever the activations' precision (no-op for float32 and float64): the
        # 1e-9 likelihood bound is below float16's range, and so is the series of the exported CDF.
        dtype = torch.promote_types(values.dtype, torch.float32)
        values, scales = values.to(dtype), self.scale_lower_bound(scales.to(dtype))
        beta = self.beta_value
        likelihood = ggm_cdf((values + 0.5) / scales, beta) - ggm_cdf((values - 0.5) / scales, beta)
        return self.likelihood_lower_bound(likelihood)
