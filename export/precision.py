"""Reduced-precision exports: graphs computed in float16 behind float32 inputs and outputs, and how
far they are from float32 on the export's sample.

``ReducedPrecisionGraph`` wraps a graph's module; ``reduced_precision_error`` measures a graph and
``reduced_precision_forward_error`` the whole forward (with float32's rounding decisions, see there)
against float32 eager, refusing outputs that overflow float16.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from hpcm.errors import ExportError
from hpcm.models.graphs import GRAPHS, forward_outputs
from hpcm.models.hpcm import HPCM

if TYPE_CHECKING:
    from .tracing import GraphSpec

# Compute dtype of each --precision. Graph inputs and outputs stay float32 either way.
COMPUTE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class ReducedPrecisionGraph(nn.Module):
    """``inner`` computed in ``dtype`` behind float32 inputs and outputs.

    The float32 interface keeps the runtime, the codec and engine bindings identical for every
    precision; the casts at the graph boundary cost nothing next to the networks.
    """

    def __init__(self, inner: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner
        self.dtype = dtype

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(o.float() for o in self.inner(*(t.to(self.dtype) for t in inputs)))


def _check_finite(graph: str, names: Sequence[str], outputs: Sequence[torch.Tensor]) -> None:
    """Raises ExportError when an output is not finite: float16 overflowed (its largest value is 65504)
    somewhere in the network, and the graph would be wrong on real inputs too."""
    for name, value in zip(names, outputs):
        if not torch.isfinite(value).all():
            raise ExportError(f"{graph}: output {name} is not finite in reduced precision (float16 overflow); "
                              "export with --precision fp32")


def _output_errors(names: Sequence[str], expected: Sequence[torch.Tensor], actual: Sequence[torch.Tensor]) -> dict:
    """Per output, max abs and relative (to the float32 output's max magnitude) error."""
    errors = {}
    for name, e, a in zip(names, expected, actual):
        scale = float(e.abs().max()) or 1.0
        difference = float((a.float() - e).abs().max())
        errors[name] = {"max_abs": difference, "relative": difference / scale}
    return errors


def reduced_precision_error(reference: GraphSpec, reduced: GraphSpec) -> dict:
    """Per output, the error of the reduced precision eager module against the float32 one on the
    sample inputs (``_output_errors``); ExportError where an output is not finite."""
    with torch.no_grad():
        expected = reference.module(*reference.inputs.values())
        actual = reduced.module(*reduced.inputs.values())
    _check_finite(reduced.name, reduced.outputs, actual)
    return _output_errors(reference.outputs, expected, actual)


def reduced_precision_forward_error(reference: HPCM, reduced: HPCM, x: torch.Tensor, dtype: torch.dtype
                                    ) -> tuple[dict, dict]:
    """The whole forward's error against float32 taken with float32's rounding decisions, and how many
    of its own decisions differ (``GraphRecord.rounding_vs_float32``).

    The forward rounds z and every step's y - means inside the graph. Where float32 leaves a residual
    nearer a .5 boundary than float16's error in the means, float16 may round it the other way, and that
    symbol moves x_hat by a whole quantisation step and changes the context of the steps after it: a
    property of the weights and the image, not a loss of precision (seeded phase2 at 256x256 rounds
    2 of 86,016 otherwise, which alone moves x_hat by 5.2e-2 of its range, while its error with
    float32's decisions is 1.1e-3). So the two are measured apart.
    """
    names = GRAPHS["forward"].output_names
    with torch.no_grad():
        expected = reference(x, training=False)
        own = reduced(x.to(dtype), training=False)
        _check_finite("forward", names, forward_outputs(own))
        given = reduced(x.to(dtype), training=False, rounding=expected["rounding"])
    _check_finite("forward", names, forward_outputs(given))
    decisions = expected["rounding"]
    rounding = {"decisions": decisions.count(), "differing": decisions.differences(own["rounding"])}
    return _output_errors(names, forward_outputs(expected), forward_outputs(given)), rounding
