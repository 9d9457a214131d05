"""The deployable pieces of an HPCM model: one graph per network the codec calls, with fixed I/O names.

This table is the one definition of what a "graph" is. The exporter traces ``GraphModule``s built
from it, every runner (eager PyTorch, ONNX Runtime, TensorRT) runs graphs by these names, and
``GraphNetworks`` turns any runner into the networks the codec and the progressive schedule call.

Tensor sides are given by their stride: image pixels per element (1 for images, 16 for y and the
hyper parameters, 64 for z; the progressive scales s1/s2/s3 have strides 64/32/16).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import nn

from .progressive import STEPS

IMAGE_STRIDE, Y_STRIDE, Z_STRIDE = 1, 16, 64
SCALE_STRIDES = (64, 32, 16)  # s1, s2, s3


@dataclass(frozen=True)
class TensorSpec:
    name: str
    channels: str  # "3", "M", "2M" or "N"
    stride: int

    def channel_count(self, M: int, N: int) -> int:
        return {"3": 3, "M": M, "2M": 2 * M, "N": N}[self.channels]


@dataclass(frozen=True)
class GraphDef:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    compute: Callable[..., tuple[torch.Tensor, ...]]  # (model, *inputs) -> outputs in order
    meta: dict

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


def step_graph_name(step: int) -> str:
    return f"step{step:02d}"


# The context_net of the transitions into s2 and s3 (the layout moves around it are not graphs).
FUSION_GRAPHS = ("context_fusion_s2", "context_fusion_s3")


def _step_graph(step: int) -> GraphDef:
    stride = SCALE_STRIDES[STEPS[step].scale]
    return GraphDef(
        step_graph_name(step),
        (TensorSpec("context_next", "2M", stride), TensorSpec("y_hat", "M", stride)),
        (TensorSpec("scales", "M", stride), TensorSpec("means", "M", stride),
         TensorSpec("new_context_next", "2M", stride)),
        lambda model, context_next, y_hat: model.step_context(step, context_next, y_hat),
        {"step": step, "scale": ("s1", "s2", "s3")[STEPS[step].scale]},
    )


def _fusion_graph(scale: int) -> GraphDef:
    stride = SCALE_STRIDES[scale]
    return GraphDef(
        FUSION_GRAPHS[scale - 1],
        (TensorSpec("context", "2M", stride),),
        (TensorSpec("new_context_next", "2M", stride),),
        lambda model, context: (model.fuse_context(scale, context),),
        {"scale": ("s1", "s2", "s3")[scale]},
    )


def forward_outputs(out: dict) -> tuple[torch.Tensor, ...]:
    """The forward graph's outputs, in order, from what ``HPCM.forward`` returns."""
    return out["x_hat"], out["likelihoods"]["y"], out["likelihoods"]["z"]


def _forward(model, x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # noqa: ANN001 - an HPCM
    return forward_outputs(model(x, training=False))


def _graphs() -> dict[str, GraphDef]:
    image = TensorSpec("x", "3", IMAGE_STRIDE)
    defs = [
        GraphDef("analysis", (image,), (TensorSpec("y", "M", Y_STRIDE), TensorSpec("z", "N", Z_STRIDE)),
                 lambda model, x: model.analyse(x), {}),
        GraphDef("hyper_synthesis", (TensorSpec("z_hat", "N", Z_STRIDE),), (TensorSpec("params", "2M", Y_STRIDE),),
                 lambda model, z_hat: (model.h_s(z_hat),), {}),
        *(_step_graph(step) for step, s in enumerate(STEPS) if s.has_network),
        *(_fusion_graph(scale) for scale in (1, 2)),
        GraphDef("synthesis", (TensorSpec("y_hat", "M", Y_STRIDE),), (TensorSpec("x_hat", "3", IMAGE_STRIDE),),
                 lambda model, y_hat: (model.g_s(y_hat),), {}),
        GraphDef("forward", (image,),
                 (TensorSpec("x_hat", "3", IMAGE_STRIDE), TensorSpec("y_likelihoods", "M", Y_STRIDE),
                  TensorSpec("z_likelihoods", "N", Z_STRIDE)), _forward, {}),
    ]
    return {d.name: d for d in defs}


GRAPHS: dict[str, GraphDef] = _graphs()
# What the codec runs; the whole-model forward is for parity checks and benchmarks only.
CODEC_GRAPHS = tuple(name for name in GRAPHS if name != "forward")


def graph_def(name: str) -> GraphDef:
    try:
        return GRAPHS[name]
    except KeyError:
        raise ValueError(f"unknown graph {name!r}; known: {', '.join(GRAPHS)}") from None


class GraphModule(nn.Module):
    """One graph of ``model`` as a module taking the graph's inputs in order (what is traced)."""

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model = model
        self.graph = graph_def(name)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.graph.compute(self.model, *inputs))


class GraphRunner(Protocol):
    """Anything that runs graphs by name (``hpcm.runtime.runners``)."""

    def run(self, graph: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


class GraphNetworks:
    """The networks of the codec and of ``ProgressiveSchedule``, each one graph on ``runner``."""

    def __init__(self, runner: GraphRunner) -> None:
        self.runner = runner

    def _call(self, name: str, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        graph = GRAPHS[name]
        outputs = self.runner.run(name, dict(zip(graph.input_names, inputs)))
        return tuple(outputs[n] for n in graph.output_names)

    def analyse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, z = self._call("analysis", x)
        return y, z

    def h_s(self, z_hat: torch.Tensor) -> torch.Tensor:
        return self._call("hyper_synthesis", z_hat)[0]

    def step_context(self, step: int, context_next: torch.Tensor, y_hat: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scales, means, new_context = self._call(step_graph_name(step), context_next, y_hat)
        return scales, means, new_context

    def fuse_context(self, scale: int, context: torch.Tensor) -> torch.Tensor:
        return self._call(FUSION_GRAPHS[scale - 1], context)[0]

    def g_s(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self._call("synthesis", y_hat)[0]
