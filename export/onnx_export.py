"""ONNX export of an HPCM model: one graph per network the codec calls, into an export folder.

The graphs are those of ``hpcm.models.graphs`` (analysis, hyper synthesis, step01..step10, the two
context fusions of the scale transitions, synthesis; the whole-model ``forward`` on request). The folder they go into is
the deployment artifact of ``artifact.py``: graphs, one shared ``weights.bin``, ``codec.npz`` and a
manifest, written transactionally.

Exporter route: ``torch.onnx.export(..., dynamo=True, dynamic_shapes=...)`` (torch.export,
non-strict). Batch, height and width are dynamic. In each graph the input of the coarsest stride
gives the roots ``height``/``width``; finer inputs are declared as integer multiples of them, so
the layout reshapes between scales stay exact.

The traced model is a copy configured for export; nothing global is patched. The modules choose
their export form themselves: the Bi-WKV op emits one ``CONTRACT.domain::CONTRACT.op_type`` node
under ``torch.onnx.export`` (``--wkv custom``) or the cells compute its closed form in standard ops
(``--wkv decomposed``: ``SpatialMix.wkv_form``); the GGM CDF uses a standard-op incomplete gamma
under export. The number of WKV calls a graph must hold is read off the traced program.

``precision="fp16"`` computes in float16 behind float32 inputs and outputs (``ReducedPrecisionGraph``).
"""

from __future__ import annotations

import copy
import json
import logging
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
from torch import nn

from hpcm.codec import CodecParameters
from hpcm.errors import ArtifactError, ExportError
from hpcm.log import LOG
from hpcm.models.cells import SpatialMix
from hpcm.models.entropy import GeneralizedGaussian
from hpcm.models.graphs import CODEC_GRAPHS, GRAPHS, GraphModule, forward_outputs, step_graph_name
from hpcm.models.hpcm import HPCM
from hpcm.models.progressive import SCALES, STEPS
from hpcm.plugins.biwkv import WKV_MODES
from hpcm.plugins.biwkv.contract import CONTRACT, CONTRACT_PATH
from hpcm.plugins.biwkv.op import CLOSED_FORM_SPREAD_LIMIT

from .artifact import (PRECISIONS, WEIGHTS_NAME, WKV_ROUTES, ExportWriter, FileRecord, GraphRecord, Manifest,
                       Profile, schedule_record)
from .shared_weights import SharedWeights

# Compute dtype of each --precision. Graph inputs and outputs stay float32 either way.
COMPUTE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# How the cells compute the Bi-WKV for each --wkv route.
WKV_FORM = {"custom": "op", "decomposed": "closed_form"}
FORBIDDEN_OPS = ("NonZero", "ScatterND", "Compress")
# Room left for range(k) inside the closed form's float32 exponent budget (see biwkv.md).
DECAY_MARGIN = 20.0
DEFAULT_SIZE = (256, 256)


class _TorchvisionNotice(logging.Filter):
    """torch.onnx logs "torchvision is not installed. Skipping torchvision::<op>" four times per
    export while building its op registry; the ops are irrelevant here and the lines bury the
    export's own progress."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("torchvision is not installed")


logging.getLogger("torch.onnx._internal.exporter._registration").addFilter(_TorchvisionNotice())


# --------------------------------------------------------------------------------------------- graphs
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


# --------------------------------------------------------------------------------------------- checks
def max_abs_decay(model: HPCM) -> float:
    values = [m.decay.detach().abs().max().item() for m in model.modules() if hasattr(m, "decay")
              and isinstance(getattr(m, "decay"), torch.Tensor)]
    return max(values, default=0.0)


def default_wkv_route(model: HPCM) -> str:
    """``custom`` where the model's Bi-WKV mode has the custom node, kernel and plugins, else ``decomposed``."""
    return "custom" if WKV_MODES[model.spec.wkv].custom_node else "decomposed"


def check_wkv_route(model: HPCM, wkv: str) -> None:
    mode = WKV_MODES[model.spec.wkv]
    if wkv == "custom" and not mode.custom_node:
        raise ExportError(
            f"{model.spec.name} computes the Bi-WKV in the {mode.name} mode ({mode.doc}); that mode has no custom "
            f"node, CUDA kernel or TensorRT plugin: export it with --wkv decomposed (standard ONNX ops)"
        )


def check_decomposed_range(model: HPCM, margin: float = DECAY_MARGIN) -> float:
    """Refuse the decomposed route when max|decay| + margin leaves the closed form's float32 range."""
    limit = CLOSED_FORM_SPREAD_LIMIT[torch.float32]
    decay = max_abs_decay(model)
    if decay + margin > limit:
        raise ExportError(
            f"max|decay| = {decay:.2f} of this checkpoint plus a margin of {margin:g} for range(k) exceeds the "
            f"closed form's float32 exponent limit {limit:g}: the decomposed WKV would underflow. "
            f"Export with --wkv custom (TensorRT plugin / runtime custom op) instead."
        )
    if decay + 2 * margin > limit:
        warnings.warn(f"max|decay| = {decay:.2f} leaves little float32 headroom for the decomposed WKV "
                      f"(limit {limit:g}); check parity on real images", stacklevel=2)
    return decay


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


def _dims(value_info) -> list:
    return [d.dim_param if d.dim_param else d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _all_nodes(model) -> Iterable:
    def walk(graph):
        for node in graph.node:
            yield node
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    yield from walk(attr.g)
                for sub in attr.graphs:
                    yield from walk(sub)

    yield from walk(model.graph)
    for function in model.functions:
        yield from function.node


def check_graph(path: Path, route: str, expected_wkv: Optional[int] = None) -> dict:
    """checker + shape inference + custom-node contract checks; returns a summary for the manifest."""
    import onnx

    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model)
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=False)
    except Exception as exc:
        raise ExportError(f"{path.name}: ONNX check failed: {exc}") from exc
    nodes = list(_all_nodes(inferred))
    forbidden = sorted({n.op_type for n in nodes if n.op_type in FORBIDDEN_OPS})
    if forbidden:
        raise ExportError(f"{path.name}: data-dependent ops {forbidden} in the graph (layout must be static)")
    wkv = [n for n in nodes if n.op_type == CONTRACT.op_type]
    for node in wkv:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
        if node.domain != CONTRACT.domain:
            raise ExportError(f"{path.name}: {node.name} has domain {node.domain!r}, contract says {CONTRACT.domain!r}")
        for key, value in CONTRACT.onnx_attributes.items():
            if attrs.get(key) != value:
                raise ExportError(f"{path.name}: {node.name} attribute {key}={attrs.get(key)!r}, expected {value!r}")
        if len(node.input) != len(CONTRACT.inputs) or len(node.output) != len(CONTRACT.outputs):
            raise ExportError(f"{path.name}: {node.name} has {len(node.input)} inputs / {len(node.output)} outputs")
    opsets = {o.domain: o.version for o in inferred.opset_import}
    if route == "custom":
        if expected_wkv is not None and len(wkv) != expected_wkv:
            raise ExportError(f"{path.name}: {len(wkv)} {CONTRACT.op_type} nodes for {expected_wkv} WKV calls")
        if wkv and opsets.get(CONTRACT.domain) != CONTRACT.opset_version:
            raise ExportError(f"{path.name}: no opset import {CONTRACT.domain} v{CONTRACT.opset_version}")
    elif wkv or any(n.domain not in ("", "ai.onnx") for n in nodes):
        raise ExportError(f"{path.name}: decomposed export still holds non-standard nodes")
    return {
        "nodes": len(nodes),
        "wkv_nodes": len(wkv),
        "opset_imports": opsets,
        "inputs": {i.name: _dims(i) for i in inferred.graph.input},
        "outputs": {o.name: _dims(o) for o in inferred.graph.output},
    }


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


# --------------------------------------------------------------------------------------------- export
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


def _step_template_key(name: str) -> Optional[int]:
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


def _progress(index: int, total: int, elapsed: list[float]) -> str:
    """``i/n`` and, from the graphs done so far, about how long the rest will take."""
    left = total - index
    if not left:
        return f"{index}/{total}"
    return f"{index}/{total}, about {sum(elapsed) / len(elapsed) * left:.0f} s left"


def export_model(
    model: HPCM,
    out_dir,
    wkv: str = "custom",
    opset: int = 18,
    size: tuple[int, int] = DEFAULT_SIZE,
    graphs: Optional[Iterable[str]] = None,
    precision: str = "fp32",
    batch: int = 1,
    trained: bool = False,
    seed: Optional[int] = None,
    source: Optional[str] = None,
    min_size: Optional[tuple[int, int]] = None,
    max_size: Optional[tuple[int, int]] = None,
    optimize: bool = False,
) -> Path:
    """Export ``model``'s graphs into the export folder ``out_dir``; returns the manifest's path.

    ``size``: image size (H, W) of the sample inputs (the optimisation size; multiples of
    ``model.alignment``); every graph still takes dynamic batch, height and width.
    ``graphs``: names from ``hpcm.models.graphs.GRAPHS`` (default: the codec's, without the
    whole-model forward). ``optimize``: run the onnxscript optimizer (constant folding, rewrites);
    it triples the export time and ONNX Runtime and TensorRT optimise the graphs themselves.
    ``trained``/``seed``/``source``: where the weights came from, recorded in the manifest.
    """
    import onnx

    if wkv not in WKV_ROUTES:
        raise ExportError(f"unknown --wkv {wkv!r}; use one of {', '.join(WKV_ROUTES)}")
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    names = tuple(CODEC_GRAPHS if graphs is None else graphs)
    size = (int(size[0]), int(size[1]))
    try:
        model.check_image_size(*size)
        profile = Profile(tuple(min_size or size), size, tuple(max_size or size)).validate(model.alignment)
    except (ArtifactError, ValueError) as exc:
        raise ExportError(str(exc)) from exc
    if "forward" in names and min(size) < 2 * model.alignment:
        # With one alignment tile per side torch.export specialises the image size inside the
        # progressive loop (found after minutes of tracing): refuse up front.
        raise ExportError(
            f"the forward graph needs a sample size of at least {2 * model.alignment}x{2 * model.alignment} "
            f"(two alignment tiles per side) to keep height/width dynamic; got {size[0]}x{size[1]}"
        )
    check_wkv_route(model, wkv)
    decay = check_decomposed_range(model) if wkv == "decomposed" else max_abs_decay(model)
    parameters = CodecParameters.from_model(model)  # refuses a model without entropy tables
    model = model.eval()
    dtype = COMPUTE_DTYPES[precision]
    traced = traced_copy(model, wkv, dtype)
    specs = graph_specs(traced, size, batch=batch, names=names)
    reference = traced_copy(model, wkv) if dtype != torch.float32 else None
    reference_specs = graph_specs(reference, size, batch=batch, names=names) if reference is not None else None
    if dtype != torch.float32:
        for spec in specs:
            spec.module = ReducedPrecisionGraph(spec.module, dtype)

    start_all = time.perf_counter()
    records: dict[str, GraphRecord] = {}
    templates: dict[int, StepTemplate] = {}
    elapsed: list[float] = []
    with ExportWriter(out_dir) as writer:
        shared = SharedWeights(writer.path(WEIGHTS_NAME))
        LOG.info(f"exporting {len(specs)} graphs of {model.spec.name} ({precision}, wkv {wkv}) at {size[0]}x{size[1]} "
            f"into {writer.target}")
        for index, spec in enumerate(specs, 1):
            path = writer.path(f"{spec.name}.onnx")
            start = time.perf_counter()
            template = templates.get(_step_template_key(spec.name))
            if template is not None:
                expected = template.clone(spec.name, traced, path)
            else:
                if spec.name == "forward":
                    LOG.info("  forward: tracing the whole model takes several minutes ...")
                try:
                    program = export_graph(spec, path, opset=opset, optimize=optimize)
                except ExportError:
                    raise
                except Exception as exc:  # the exporter raises many types; keep its cause line
                    raise ExportError(f"{spec.name}: torch.onnx.export failed: {_exception_summary(exc)}") from exc
                expected = traced_wkv_calls(program) if wkv == "custom" else None
                if _step_template_key(spec.name) is not None:
                    templates[_step_template_key(spec.name)] = StepTemplate(spec.name, path, expected)
            weights_sha256 = shared.externalize(path)
            summary = check_graph(path, wkv, expected)
            error = rounding = None
            if reference_specs and spec.name == "forward":
                x = reference_specs[index - 1].inputs["x"]
                error, rounding = reduced_precision_forward_error(reference, traced, x, dtype)
            elif reference_specs:
                error = reduced_precision_error(reference_specs[index - 1], spec)
            seconds = time.perf_counter() - start
            elapsed.append(seconds)
            records[spec.name] = GraphRecord(
                file=FileRecord.of(path), weights_sha256=weights_sha256, inputs=summary["inputs"],
                outputs=summary["outputs"], input_channels={n: int(t.shape[1]) for n, t in spec.inputs.items()},
                nodes=summary["nodes"], wkv_nodes=summary["wkv_nodes"], export_seconds=round(seconds, 2),
                error_vs_float32=error, rounding_vs_float32=rounding)
            note = ""
            if error:
                note = f", {precision} vs float32 eager: max relative error " \
                       f"{max(e['relative'] for e in error.values()):.1e}"
            if rounding:
                note += f" with float32's rounding; {rounding['differing']} of {rounding['decisions']} decisions differ"
            LOG.info(f"  [{_progress(index, len(specs), elapsed)}] {spec.name}: {summary['nodes']} nodes, "
                f"{summary['wkv_nodes']} {CONTRACT.op_type}, {seconds:.1f} s{note}")
        LOG.info(f"  {WEIGHTS_NAME}: {shared.size / 1e6:.1f} MB holds the {shared.graph_bytes / 1e6:.1f} MB of weights "
            f"the graphs reference")
        manifest = Manifest(
            variant=model.spec, alignment=model.alignment, weights_digest=parameters.weights_digest.hex(),
            wkv=wkv, precision=precision, opset=opset, sample_size=size, profile=profile, graphs=records,
            weights_file=FileRecord.of(shared.path), codec_file=writer.write_codec_parameters(parameters),
            trained_weights=trained, seed=seed, source=source, schedule=schedule_record(),
            wkv_contract=json.loads(CONTRACT_PATH.read_text()), max_abs_decay=decay, onnxscript_optimized=optimize,
            versions={"torch": torch.__version__, "onnx": onnx.__version__, **_optional_versions()},
            total_export_seconds=round(time.perf_counter() - start_all, 2),
        )
        manifest_path = writer.commit(manifest)
    LOG.info(f"wrote {len(records)} graphs and {manifest_path} in {time.perf_counter() - start_all:.0f} s")
    return manifest_path


def _exception_summary(exc: BaseException) -> str:
    """The cause line of a torch.onnx export error (its message starts with generic advice)."""
    text = str(exc)
    if "## Exception summary" in text:
        tail = text.split("## Exception summary", 1)[1].strip().splitlines()
        return " ".join(line for line in tail[:3] if line.strip())
    cause = exc.__cause__
    if cause is not None:
        return f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _optional_versions() -> dict:
    versions = {}
    for name in ("onnxscript", "onnxruntime"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # not installed: not part of the export
            pass
    return versions
