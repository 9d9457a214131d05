"""Image quality as CompressAI's evaluation computes it: on 8-bit RGB (values rounded to 0..255).

MS-SSIM with ``pytorch-msssim`` (5 scales, 11x11 Gaussian window, data range 255) in float32 on the
8-bit levels, exactly as CompressAI's ``eval_model`` calls it; it needs both sides larger than 160 px.
float32 also makes a row cheaper: float64 convolutions on a CPU took 2.5 s of each Kodak row in issue
22's profile. Against float64 the value moves by less than the 4 decimals ``hpcm eval`` prints
(README, "Many images": at most 4.6e-7 over 76 Kodak WebP rows; ``tests/test_evaluation.py`` bounds
it). PSNR over all pixels and the three channels is the codec's own
(``hpcm.codec.images.psnr_rgb8``: ``hpcm encode``/``decode`` print it too).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from hpcm.codec.images import to_8bit

# pytorch-msssim's 5 scales of an 11-px window need (11 - 1) * 2**4 < min(H, W).
MS_SSIM_MIN_SIDE = 161


def ms_ssim_rgb8(x: torch.Tensor, x_hat: torch.Tensor) -> Optional[float]:
    """MS-SSIM of ``x_hat`` against ``x`` on 8-bit RGB, or None when a side is below ``MS_SSIM_MIN_SIDE``."""
    from pytorch_msssim import ms_ssim

    if min(x.shape[-2:]) < MS_SSIM_MIN_SIDE:
        return None
    reference, decoded = to_8bit(x).to(torch.float32), to_8bit(x_hat).to(torch.float32)
    return float(ms_ssim(reference, decoded, data_range=255.0, size_average=True))


def ms_ssim_db(value: float) -> float:
    """MS-SSIM on the dB scale the R-D figures and BD tables use: -10 log10(1 - MS-SSIM)."""
    return math.inf if value >= 1.0 else -10.0 * math.log10(1.0 - value)
