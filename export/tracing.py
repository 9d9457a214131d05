"""Tracing a model's graphs to ONNX: the traced copy, the graphs' sample inputs and dynamic shapes,
``torch.onnx.export``, the WKV calls of a traced program, and step graphs cloned from a traced
template.

Exporter route: ``torch.onnx.export(..., dynamo=True, dynamic_shapes=...)`` (torch.export,
non-strict). Batch, height and width are dynamic. In each graph the input of the coarsest stride
gives the roots ``height``/``width``; finer inputs are declared as integer multiples of them, so
the layout reshapes between scales stay exact.

The traced model is a copy configured for export; nothing global is patched. The modules choose
their export form themselves: the Bi-WKV op emits one ``CONTRACT.domain::CONTRACT.op_type`` node
under ``torch.onnx.export`` (``--wkv custom``) or the cells compute its closed form in standard ops
(``--wkv decomposed``: ``SpatialMix.wkv_form``); the GGM CDF uses a standard-op incomplete gamma
under export. The number of WKV calls a graph must hold is read off the traced program.
"""

from __future__ import annotations

import copy
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
from torch import nn

from hpcm.errors import ExportError
from hpcm.models.cells import SpatialMix
from hpcm.models.entropy import GeneralizedGaussian
from hpcm.models.graphs import CODEC_GRAPHS, GRAPHS, GraphModule, step_graph_name
from hpcm.models.hpcm import HPCM
from hpcm.models.progressive import SCALES, STEPS
from hpcm.plugins.biwkv.contract import CONTRACT

from .precision import ReducedPrecisionGraph

# How the cells compute the Bi-WKV for each --wkv route.
WKV_FORM = {"custom": "op", "decomposed": "closed_form"}


class _TorchvisionNotice(logging.Filter):
    """torch.onnx logs "torchvision is not installed. Skipping torchvision::<op>" four times per
    export while building its op registry; the ops are irrelevant here and the lines bury the
    export's own progress."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("torchvision is not installed")


logging.getLogger("torch.onnx._internal.exporter._registration").addFilter(_TorchvisionNotice())


def traced_copy(model: HPCM, wkv: str, dtype: torch.dtype = torch.float32) -> HPCM:
    """The copy of ``model`` that is traced: its cells set to ``wkv``'s form, weights in ``dtype``.

    For float16, kept float32: the RWKV decay/boost (the WKV contract takes w and u as float32;
    ``boost / T`` would lose most of its digits in float16) and the GGM entropy model, whose 1e-9
    likelihood bound is below float16's smallest subnormal.
    """
    traced = copy.deepcopy(model).eval()
    if dtype != torch.float32:
        traced = traced.to(dtype)
    for module in traced.modules():
        if isinstance(module, SpatialMix):
            module.wkv_form = WKV_FORM[wkv]
        if isinstance(module, GeneralizedGaussian):
            module.float()
        for name in ("decay", "boost"):
            parameter = getattr(module, name, None)
            if isinstance(parameter, nn.Parameter) and parameter.dtype != torch.float32:
                parameter.data = parameter.data.float()
    return traced


@dataclass
class GraphSpec:
    name: str
    module: nn.Module
    inputs: dict[str, torch.Tensor]  # name -> sample
    outputs: tuple[str, ...]


def _sample(name: str, shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    if name == "x":
        return torch.rand(tuple(shape), generator=generator)
    value = torch.randn(tuple(shape), generator=generator)
    if name in ("z_hat", "y_hat"):
        return torch.round(value)
    return value.abs() if name.startswith("scales") else value


def graph_specs(model: HPCM, size: tuple[int, int], batch: int = 1,
                names: Optional[Iterable[str]] = None, seed: int = 0) -> list[GraphSpec]:
    """The graphs to export with sample inputs at image size ``size`` (multiples of the alignment)."""
    model.check_image_size(*size)
    names = CODEC_GRAPHS if names is None else tuple(names)
    unknown = [n for n in names if n not in GRAPHS]
    if unknown:
        raise ExportError(f"unknown graph(s) {unknown}; known: {', '.join(GRAPHS)}")
    g = torch.Generator().manual_seed(seed)
    H, W = size
    specs = []
    for name in names:
        graph = GRAPHS[name]
        inputs = {t.name: _sample(t.name, (batch, t.channel_count(model.M, model.N), H // t.stride, W // t.stride), g)
                  for t in graph.inputs}
        specs.append(GraphSpec(name, GraphModule(model, name), inputs, graph.output_names))
    return specs


def _dynamic_shapes(spec: GraphSpec, max_side: int) -> dict:
    """Dynamic batch; height/width: the coarsest input's sides are the roots, the others multiples."""
    strides = {t.name: t.stride for t in GRAPHS[spec.name].inputs}
    coarsest = max(strides.values())
    batch = torch.export.Dim("batch", min=1, max=256)
    th = torch.export.Dim("height", min=1, max=max_side // coarsest)
    tw = torch.export.Dim("width", min=1, max=max_side // coarsest)

    def side(stride: int, root):  # noqa: ANN001, ANN202 - torch.export dims
        return root if stride == coarsest else (coarsest // stride) * root

    return {n: {0: batch, 2: side(s, th), 3: side(s, tw)} for n, s in strides.items()}


def traced_wkv_calls(program) -> int:  # noqa: ANN001 - a torch.onnx ONNXProgram
    """Bi-WKV calls in the traced program that reach an output: each must become one custom node.

    Under export the op is recorded as torch.onnx's symbolic op carrying the contract's domain and
    op_type (``hpcm.plugins.biwkv.op.biwkv``); dead calls are dropped first, as the ONNX graph drops them.
    """
    exported = program.exported_program
    if exported is None:
        raise ExportError("torch.onnx.export kept no exported program to count the WKV calls of")
    module = copy.deepcopy(exported.graph_module)
    module.graph.eliminate_dead_code()
    return sum(1 for node in module.graph.nodes
               if node.op == "call_function" and str(node.target).startswith("onnx_symbolic._symbolic")
               and node.args[1:2] == (CONTRACT.op_type,) and node.kwargs.get("domain") == CONTRACT.domain)


def export_graph(spec: GraphSpec, path: Path, opset: int = 18, max_side: int = 8192, optimize: bool = False):
    """Trace ``spec`` to ``path``; returns the ONNX program (its exported program is kept)."""
    spec.module.eval()
    # A root of 1 (one alignment tile, e.g. a 128x128 sample) would otherwise be specialised.
    oblivious = torch.fx.experimental._config.patch(backed_size_oblivious=True)
    shapes = _dynamic_shapes(spec, max_side)
    if isinstance(spec.module, (GraphModule, ReducedPrecisionGraph)):
        shapes = {"inputs": tuple(shapes.values())}  # their forward takes *inputs
    with torch.no_grad(), warnings.catch_warnings(), oblivious:
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            spec.module,
            tuple(spec.inputs.values()),
            dynamo=True,
            dynamic_shapes=shapes,
            input_names=list(spec.inputs),
            output_names=list(spec.outputs),
            opset_version=opset,
            external_data=False,
            optimize=optimize,
            verbose=False,
        )
    if program is None:
        raise ExportError(f"{spec.name}: torch.onnx.export returned no program")
    program.save(str(path), external_data=False)
    return program


def step_template_key(name: str) -> Optional[int]:
    """Step graphs of one scale share their structure: the scale is the key, None for other graphs."""
    for step, s in enumerate(STEPS):
        if s.has_network and step_graph_name(step) == name:
            return s.scale
    return None


class StepTemplate:
    """A traced step graph standing in for the other steps of its scale.

    The steps of one scale run the same networks (the scale's prior and context cell) and differ only
    in which adaptor and adaptive parameter they use, so tracing them again would give the same graph
    with other initializers. A clone renames those initializers (their names are the parameters'
    module paths) and takes every parameter's value from the traced model: the graph tracing would
    give, in a fraction of a second instead of about ten.
    """

    _PARAMETER = re.compile(r"^(?P<prefix>(?:\w+\.)*?model\.)(?P<path>.+)$")

    def __init__(self, name: str, path: Path, wkv_calls: Optional[int]) -> None:
        import onnx

        self.step = int(name[len("step"):])
        self.model = onnx.load(str(path))  # weights still inline: read before they move to weights.bin
        self.wkv_calls = wkv_calls

    def _renamed(self, path: str, step: int) -> str:
        source, target = STEPS[self.step], STEPS[step]
        adaptors = f"y_spatial_prior_adaptor_list_{SCALES[source.scale]}"
        for prefix, old, new in ((adaptors, source.adaptor, target.adaptor),
                                 ("adaptive_params_list", source.adaptive_param, target.adaptive_param)):
            if path == f"{prefix}.{old}" or path.startswith(f"{prefix}.{old}."):
                return f"{prefix}.{new}" + path[len(f"{prefix}.{old}"):]
        return path

    def clone(self, name: str, traced: nn.Module, path: Path) -> Optional[int]:
        """Write the graph of step ``name`` of ``traced`` to ``path``; returns the template's WKV count."""
        import onnx
        from onnx import numpy_helper

        step = int(name[len("step"):])
        state = traced.state_dict()
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        renames = {}
        for tensor in model.graph.initializer:
            match = self._PARAMETER.match(tensor.name)
            if match is None or match["path"] not in state:
                continue  # a constant of the trace: the same for every step of the scale
            new_path = self._renamed(match["path"], step)
            value = state[new_path].detach().cpu().numpy()
            if tuple(value.shape) != tuple(tensor.dims) or value.dtype != numpy_helper.to_array(tensor).dtype:
                raise ExportError(f"{name}: parameter {new_path} does not fit the {step_graph_name(self.step)} graph")
            renames[tensor.name] = match["prefix"] + new_path
            tensor.CopyFrom(numpy_helper.from_array(value, renames[tensor.name]))
        for node in model.graph.node:
            node.input[:] = [renames.get(i, i) for i in node.input]
        onnx.save(model, str(path))
        return self.wkv_calls


def trace_failure(exc: BaseException) -> str:
    """The cause line of a torch.onnx export error (its message starts with generic advice)."""
    text = str(exc)
    if "## Exception summary" in text:
        tail = text.split("## Exception summary", 1)[1].strip().splitlines()
        return " ".join(line for line in tail[:3] if line.strip())
    cause = exc.__cause__
    if cause is not None:
        return f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
