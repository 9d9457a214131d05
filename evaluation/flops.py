"""Parameters and multiply-accumulates (MACs) per pixel of each top-level module of a model.

MACs come from PyTorch's FLOP counter (``torch.utils.flop_counter.FlopCounterMode``, which counts
matrix products, convolutions and attention, two FLOPs per MAC) over the eval-mode forward, which runs
every network the codec runs (analysis, hyper synthesis, the step and fusion networks, synthesis).
The counter knows no formula for the Bi-WKV op, so one is given for ``hpcm::biwkv`` (in the counter's
own mapping, not PyTorch's global registry). Every network here is linear in the pixel count (windowed
attention, 1-D scans over H*W), so MACs per pixel measured at one aligned size hold at every size.
"""

from __future__ import annotations

from typing import Optional

import torch

from hpcm.models.checkpoint import parameter_table
from hpcm.models.hpcm import HPCM
from hpcm.plugins.biwkv.op import biwkv  # noqa: F401 - registers torch.ops.hpcm.biwkv

# Multiply-accumulates per (batch, channel, token) element of a Bi-WKV call: in each of the two
# directions the running numerator and denominator are decayed and take the token's weighted value
# (2 MACs), and the token's own boost term adds one to the combined numerator (1 MAC). Exponentials and
# the final division are not counted, as the counter counts no elementwise operation anywhere else.
WKV_MACS_PER_ELEMENT = 5


def _wkv_flops(w_shape, u_shape, k_shape, v_shape, *args, **kwargs) -> int:  # noqa: ANN001 - shapes
    batch, channels, tokens = k_shape
    return 2 * WKV_MACS_PER_ELEMENT * batch * channels * tokens


def module_costs(model: HPCM, height: Optional[int] = None, width: Optional[int] = None) -> dict:
    """Parameters and MACs per pixel per top-level module of ``model`` (eval forward on a smooth image of
    height x width, default one alignment square), with their totals."""
    from torch.utils.flop_counter import FlopCounterMode

    height = height or model.alignment
    width = width or model.alignment
    x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False, depth=1, custom_mapping={torch.ops.hpcm.biwkv: _wkv_flops})
    model = model.eval()
    with torch.no_grad(), counter:
        model(x, training=False)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    pixels = height * width
    macs = {}
    for name, _ in model.named_children():
        if f"{root}.{name}" in counts:
            flops = sum(counts[f"{root}.{name}"].values())
        else:  # a ModuleList is never called itself: add up its members
            flops = sum(sum(ops.values()) for key, ops in counts.items()
                        if key.startswith(f"{root}.{name}.") and key.count(".") == 2)
        if flops:
            macs[name] = flops / 2 / pixels
    parameters = dict(parameter_table(model))
    total_parameters = parameters.pop("total")
    return {"parameters": parameters, "total_parameters": total_parameters,
            "macs_per_pixel": macs, "total_macs_per_pixel": sum(counts.get("Global", {}).values()) / 2 / pixels,
            "counted_at": [width, height], "wkv_macs_per_element": WKV_MACS_PER_ELEMENT}
