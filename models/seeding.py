"""Random initialisation that gives the same bits on every CPU.

PyTorch's ``uniform_`` and ``normal_`` compute ``low + u * (high - low)`` and Box-Muller in float
kernels compiled once per vector unit, and those builds disagree in the last bit (ATen's default
build against its AVX2/AVX-512 builds: 240 of baseline's 290 tensors). A seeded model must be the same
model everywhere, or its weights digest differs and its streams are refused on the other machine. Here
random values come from random *integers* (a Mersenne Twister's output, the same everywhere) mapped
to floats with exact arithmetic and at most one rounding.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

_BITS = 24  # float32's significand: integers below 2**24 and their halves below 2**23 are exact


def _unit_integers(shape: torch.Size, count: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    """``count`` independent integers in [0, 2**24) per element, int64 of shape (count, *shape)."""
    return torch.randint(0, 1 << _BITS, (count, *shape), generator=generator, dtype=torch.int64)


@torch.no_grad()
def portable_uniform_(tensor: torch.Tensor, bound: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Fill a float32 tensor with U(-bound, bound): k - (2**22 - 1/2) for a random k < 2**23 is exact in
    float32, and times bound * 2**-22 rounds once (two separate kernels: nothing can fuse them)."""
    values = torch.randint(0, 1 << (_BITS - 1), tensor.shape, generator=generator, dtype=torch.int32)
    unit = values.to(torch.float32).sub_((1 << (_BITS - 2)) - 0.5)
    return tensor.copy_(unit.mul_(float(torch.tensor(bound, dtype=torch.float32)) * 2.0 ** (2 - _BITS)))


@torch.no_grad()
def portable_normal_(tensor: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Fill with an approximately standard normal: the Irwin-Hall sum of 12 uniforms less 6, summed
    exactly in integers and rounded once to the tensor's dtype (no log or cos whose last bits vary)."""
    total = _unit_integers(tensor.shape, 12, generator).sum(0) - 6 * (1 << _BITS)
    return tensor.copy_((total.to(torch.float64) * (2.0 ** -_BITS)).to(tensor.dtype))


def portable_convolutions_(model: nn.Module, generator: Optional[torch.Generator] = None) -> None:
    """Draw every convolution's and linear layer's weight and bias again from PyTorch's default
    distribution (kaiming-uniform with a = sqrt(5): U(+-1/sqrt(fan_in)) for both), portably."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            weight = module.weight
            # PyTorch's fan-in: dimension 1 times the kernel size (for transposed convolutions too)
            bound = 1.0 / math.sqrt(weight.shape[1] * weight[0][0].numel())
            portable_uniform_(weight, bound, generator)
            if module.bias is not None:
                portable_uniform_(module.bias, bound, generator)
