"""ONNX export of an HPCM model: one graph per deployable piece, plus a manifest.

Graphs (``GRAPH_KINDS``):

* ``analysis``         x -> y, z
* ``hyper_synthesis``  z_hat -> params (scales and means of the hyper prior, 2M channels)
* ``step01``..``step10`` context_next, y_hat -> scales, means, new_context_next, all at the step's scale
  (step 0 has no network: its parameters are the hyper prior's)
* ``transition_s1_s2``, ``transition_s2_s3``  context_next, y_hat, scales_hyper, means_hyper ->
  new_context_next, new_y_hat (``HPCM.transition``)
* ``synthesis``        y_hat -> x_hat
* ``forward``          x -> x_hat, y_likelihoods, z_likelihoods (eval mode: rounding, no noise)

Exporter route: ``torch.onnx.export(..., dynamo=True, dynamic_shapes=...)`` (torch.export,
non-strict). Batch, height and width are dynamic. In each graph the smallest input's height and
width are the roots ``height``/``width``; inputs at a larger scale are declared as integer multiples
of them, so the layout reshapes between scales stay exact.

Every graph's large initializers go to one shared ``weights.bin`` (``shared_weights.py``).
``precision="fp16"`` computes in float16 behind float32 inputs and outputs (``ReducedPrecisionGraph``).

WKV routes: ``custom`` emits one ``CONTRACT.domain::CONTRACT.op_type`` node per Bi-WKV call (for the
TensorRT plugin / a runtime custom op); ``decomposed`` routes the cells to ``biwkv_closed_form``,
which is built from standard ONNX operators only (Exp, CumSum, ReduceMax, ...), so the graphs run on
any ONNX runtime while the exponent spread stays inside float32's range.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import nn

from hpcm.models.cells import CrossAttentionCell
from hpcm.models.hpcm import HPCM, STEPS, ProgressiveState
from hpcm.plugins.biwkv.contract import CONTRACT, CONTRACT_PATH
from hpcm.plugins.biwkv.op import CLOSED_FORM_SPREAD_LIMIT

from .shared_weights import WEIGHTS_NAME, SharedWeights

WKV_ROUTES = ("custom", "decomposed")
# Compute dtype of each --precision. Graph inputs and outputs stay float32 either way.
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}
STEP_GRAPHS = tuple(f"step{i:02d}" for i in range(1, len(STEPS)))
TRANSITION_GRAPHS = ("transition_s1_s2", "transition_s2_s3")
GRAPH_KINDS = ("analysis", "hyper_synthesis", *STEP_GRAPHS, *TRANSITION_GRAPHS, "synthesis", "forward")
FORBIDDEN_OPS = ("NonZero", "ScatterND", "Compress")
# Room left for range(k) inside the closed form's float32 exponent budget (see biwkv.md).
DECAY_MARGIN = 20.0
MANIFEST_NAME = "manifest.json"
ENTROPY_TABLES_NAME = "entropy_tables.npz"


class ExportError(RuntimeError):
    """An export that cannot be done or whose result failed a check, with the reason."""


# --------------------------------------------------------------------------------------------- graphs
class AnalysisGraph(nn.Module):
    def __init__(self, model: HPCM) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        y = self.model.g_a(x)
        return y, self.model.h_a(y)


class HyperSynthesisGraph(nn.Module):
    def __init__(self, model: HPCM) -> None:
        super().__init__()
        self.model = model

    def forward(self, z_hat: torch.Tensor) -> torch.Tensor:
        return self.model.h_s(z_hat)


class StepGraph(nn.Module):
    def __init__(self, model: HPCM, step: int) -> None:
        super().__init__()
        if not 1 <= step < len(STEPS):
            raise ValueError(f"step graphs exist for steps 1..{len(STEPS) - 1}; got {step}")
        self.model = model
        self.step = step

    def forward(self, context_next: torch.Tensor, y_hat: torch.Tensor):
        return self.model.step_context(self.step, context_next, y_hat)


class TransitionGraph(nn.Module):
    """``HPCM.transition`` from ``scale`` to ``scale + 1`` as a pure function."""

    def __init__(self, model: HPCM, scale: int) -> None:
        super().__init__()
        self.model = model
        self.scale = scale

    def forward(self, context_next, y_hat, scales_hyper, means_hyper):
        state = ProgressiveState(scales_hyper, means_hyper, self.scale, context_next, y_hat)
        self.model.transition(self.scale, state)
        return state.context_next, state.y_hat


class SynthesisGraph(nn.Module):
    def __init__(self, model: HPCM) -> None:
        super().__init__()
        self.model = model

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.model.g_s(y_hat)


class ForwardGraph(nn.Module):
    def __init__(self, model: HPCM) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        out = self.model(x, training=False)
        return out["x_hat"], out["likelihoods"]["y"], out["likelihoods"]["z"]


class ReducedPrecisionGraph(nn.Module):
    """``inner`` computed in ``dtype`` behind float32 inputs and outputs.

    The float32 interface keeps the runtime, the codec and engine bindings identical for every
    precision; the casts at the graph boundary cost nothing next to the networks.
    """

    def __init__(self, inner: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner
        self.dtype = dtype

    def forward(self, *inputs: torch.Tensor):
        outputs = self.inner(*(t.to(self.dtype) for t in inputs))
        if isinstance(outputs, torch.Tensor):
            return outputs.float()
        return tuple(o.float() for o in outputs)


def reduced_precision_copy(model: HPCM, dtype: torch.dtype) -> HPCM:
    """A copy of ``model`` with weights in ``dtype``, except what must stay float32.

    Kept float32: the RWKV decay/boost (the WKV contract takes w and u as float32; ``boost / T``
    would lose most of its digits in float16) and the GGM entropy model, whose 1e-9 likelihood
    bound is below float16's smallest subnormal; its likelihood is computed in float32.
    """
    from hpcm.models.entropy import GeneralizedGaussian

    reduced = copy.deepcopy(model).to(dtype)
    for module in reduced.modules():
        if isinstance(module, GeneralizedGaussian):
            module.float()
        for name in ("decay", "boost"):
            parameter = getattr(module, name, None)
            if isinstance(parameter, nn.Parameter) and parameter.dtype != torch.float32:
                parameter.data = parameter.data.float()
    return reduced


@dataclass
class GraphSpec:
    name: str
    module: nn.Module
    inputs: dict[str, torch.Tensor]  # name -> sample
    input_units: dict[str, int]  # name -> spatial side per tile (height = unit * th)
    outputs: tuple[str, ...]
    meta: dict = field(default_factory=dict)


def _y_unit(model: HPCM) -> int:
    """Side of y per alignment tile (the image side per tile is 16 times this)."""
    return model.alignment // 16


def _sample(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=generator)


def graph_specs(model: HPCM, size: tuple[int, int], batch: int = 1,
                names: Optional[Iterable[str]] = None, seed: int = 0) -> list[GraphSpec]:
    """The graphs to export with sample inputs at image size ``size`` (multiples of the alignment)."""
    model.check_image_size(*size)
    names = GRAPH_KINDS if names is None else tuple(names)
    unknown = [n for n in names if n not in GRAPH_KINDS]
    if unknown:
        raise ValueError(f"unknown graph(s) {unknown}; known: {', '.join(GRAPH_KINDS)}")
    g = torch.Generator().manual_seed(seed)
    M, N = model.M, model.N
    u = _y_unit(model)
    H, W = size
    yh, yw = H // 16, W // 16
    scale_side = {0: u // 4, 1: u // 2, 2: u}  # side per tile at s1, s2, s3
    specs: list[GraphSpec] = []
    for name in names:
        if name == "analysis":
            specs.append(GraphSpec(name, AnalysisGraph(model), {"x": torch.rand(batch, 3, H, W, generator=g)},
                                   {"x": 16 * u}, ("y", "z")))
        elif name == "hyper_synthesis":
            specs.append(GraphSpec(name, HyperSynthesisGraph(model),
                                   {"z_hat": torch.round(_sample((batch, N, yh // 4, yw // 4), g))},
                                   {"z_hat": u // 4}, ("params",)))
        elif name in STEP_GRAPHS:
            step = int(name[4:])
            s = STEPS[step].scale
            f = 2 ** (2 - s)
            specs.append(GraphSpec(
                name, StepGraph(model, step),
                {"context_next": _sample((batch, 2 * M, yh // f, yw // f), g),
                 "y_hat": torch.round(_sample((batch, M, yh // f, yw // f), g))},
                {"context_next": scale_side[s], "y_hat": scale_side[s]},
                ("scales", "means", "new_context_next"),
                {"step": step, "scale": ("s1", "s2", "s3")[s]},
            ))
        elif name in TRANSITION_GRAPHS:
            s = TRANSITION_GRAPHS.index(name)
            f = 2 ** (2 - s)
            specs.append(GraphSpec(
                name, TransitionGraph(model, s),
                {"context_next": _sample((batch, 2 * M, yh // f, yw // f), g),
                 "y_hat": torch.round(_sample((batch, M, yh // f, yw // f), g)),
                 "scales_hyper": _sample((batch, M, yh, yw), g).abs(),
                 "means_hyper": _sample((batch, M, yh, yw), g)},
                {"context_next": scale_side[s], "y_hat": scale_side[s], "scales_hyper": u, "means_hyper": u},
                ("new_context_next", "new_y_hat"),
                {"from_scale": ("s1", "s2")[s], "to_scale": ("s2", "s3")[s]},
            ))
        elif name == "synthesis":
            specs.append(GraphSpec(name, SynthesisGraph(model), {"y_hat": torch.round(_sample((batch, M, yh, yw), g))},
                                   {"y_hat": u}, ("x_hat",)))
        elif name == "forward":
            specs.append(GraphSpec(name, ForwardGraph(model), {"x": torch.rand(batch, 3, H, W, generator=g)},
                                   {"x": 16 * u}, ("x_hat", "y_likelihoods", "z_likelihoods")))
    return specs


def _dynamic_shapes(spec: GraphSpec, max_tiles: int):
    """Dynamic batch; height/width = unit * th / unit * tw with roots shared by every input."""
    batch = torch.export.Dim("batch", min=1, max=256)
    base = min(spec.input_units.values())
    th = torch.export.Dim("height", min=1, max=max_tiles * base)
    tw = torch.export.Dim("width", min=1, max=max_tiles * base)

    base = min(spec.input_units.values())

    def side(unit: int, root):
        return root if unit == base else (unit // base) * root

    return {n: {0: batch, 2: side(spec.input_units[n], th), 3: side(spec.input_units[n], tw)} for n in spec.inputs}


# --------------------------------------------------------------------------------------------- routes
@contextlib.contextmanager
def wkv_route(route: str):
    """Route the RWKV cells' Bi-WKV: ``custom`` (one contract node) or ``decomposed`` (closed form)."""
    if route not in WKV_ROUTES:
        raise ValueError(f"unknown WKV route {route!r}; use one of {', '.join(WKV_ROUTES)}")
    if route == "custom":
        yield
        return
    import hpcm.models.cells as cells
    from hpcm.plugins.biwkv.op import biwkv_closed_form

    original = cells.biwkv
    cells.biwkv = lambda w, u, k, v: biwkv_closed_form(w.to(k.dtype), u.to(k.dtype), k, v)
    try:
        yield
    finally:
        cells.biwkv = original


def _gammainc_standard_ops(a: float, x: torch.Tensor, iterations: int = 48) -> torch.Tensor:
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


def _ggm_cdf_standard_ops(x: torch.Tensor, beta: float) -> torch.Tensor:
    magnitude = x.abs().pow(beta)
    return 0.5 * (1 + torch.sign(x) * _gammainc_standard_ops(1.0 / beta, magnitude))


@contextlib.contextmanager
def export_friendly_entropy(model: Optional[nn.Module] = None):
    """Make the GGM likelihood exportable, without changing its value.

    ``torch.special.gammainc`` has no ONNX lowering: it is swapped for a standard-op series /
    continued fraction. ``GeneralizedGaussian.forward`` reads beta with ``float(buffer)``, a
    data-dependent guard under torch.export: beta is read once here and used as a constant.
    """
    import hpcm.models.entropy as entropy

    original_cdf = entropy.ggm_cdf
    original_forward = entropy.GeneralizedGaussian.forward
    betas = {}
    if model is not None:
        betas = {id(m): float(m.beta) for m in model.modules() if isinstance(m, entropy.GeneralizedGaussian)}

    def forward(self, values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        beta = betas.get(id(self))
        if beta is None:
            beta = self.beta_value
        # float32 whatever the graph's precision: the series and the likelihood bound need it.
        values, scales = values.float(), self.scale_lower_bound(scales.float())
        likelihood = (_ggm_cdf_standard_ops((values + 0.5) / scales, beta)
                      - _ggm_cdf_standard_ops((values - 0.5) / scales, beta))
        return self.likelihood_lower_bound(likelihood)

    entropy.ggm_cdf = _ggm_cdf_standard_ops
    entropy.GeneralizedGaussian.forward = forward
    try:
        yield
    finally:
        entropy.ggm_cdf = original_cdf
        entropy.GeneralizedGaussian.forward = original_forward


def max_abs_decay(model: HPCM) -> float:
    values = [m.decay.detach().abs().max().item() for m in model.modules() if hasattr(m, "decay")
              and isinstance(getattr(m, "decay"), torch.Tensor)]
    return max(values, default=0.0)


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


def count_wkv_calls(spec: GraphSpec) -> int:
    """Bi-WKV calls of one eager run of the graph's module (each becomes one custom node)."""
    import hpcm.models.cells as cells

    original = cells.biwkv
    calls = 0

    def counting(*args):
        nonlocal calls
        calls += 1
        return original(*args)

    cells.biwkv = counting
    try:
        with torch.no_grad():
            spec.module(*spec.inputs.values())
    finally:
        cells.biwkv = original
    return calls


# --------------------------------------------------------------------------------------------- checks
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


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (graphs are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def reduced_precision_error(reference: GraphSpec, reduced: GraphSpec) -> dict:
    """Per output, max abs and relative (to the float32 output's max magnitude) error of the reduced
    precision eager module against the float32 one on the sample inputs.

    Raises ExportError when an output is not finite: float16 overflowed (its largest value is 65504)
    somewhere in the network, and the graph would be wrong on real inputs too.
    """
    with torch.no_grad(), export_friendly_entropy(reference.module.model):
        expected = reference.module(*reference.inputs.values())
        actual = reduced.module(*reduced.inputs.values())
    if isinstance(expected, torch.Tensor):
        expected, actual = (expected,), (actual,)
    errors = {}
    for name, e, a in zip(reference.outputs, expected, actual):
        if not torch.isfinite(a).all():
            raise ExportError(f"{reduced.name}: output {name} is not finite in reduced precision (float16 overflow); "
                              "export with --precision fp32")
        scale = float(e.abs().max()) or 1.0
        difference = float((a.float() - e).abs().max())
        errors[name] = {"max_abs": difference, "relative": difference / scale}
    return errors


# --------------------------------------------------------------------------------------------- export
def export_graph(spec: GraphSpec, path: Path, opset: int = 18, max_tiles: int = 64, optimize: bool = True) -> None:
    spec.module.eval()
    # A root of 1 (one alignment tile, e.g. a 128x128 sample) would otherwise be specialised.
    oblivious = torch.fx.experimental._config.patch(backed_size_oblivious=True)
    shapes = _dynamic_shapes(spec, max_tiles)
    if isinstance(spec.module, ReducedPrecisionGraph):
        shapes = {"inputs": tuple(shapes.values())}  # its forward takes *inputs
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


def _normalise_size(sizes) -> tuple[int, int]:
    if sizes is None:
        return (256, 256)
    if isinstance(sizes, int):
        return (sizes, sizes)
    sizes = tuple(sizes)
    if len(sizes) == 2 and all(isinstance(s, int) for s in sizes):
        return sizes  # type: ignore[return-value]
    first = tuple(sizes[0])
    return (int(first[0]), int(first[1]))


def export_model(
    model: HPCM,
    out_dir,
    wkv: str = "custom",
    opset: int = 18,
    sizes=(256, 256),
    graphs: Optional[Iterable[str]] = None,
    precision: str = "fp32",
    batch: int = 1,
    log: Callable[[str], None] = print,
    checkpoint: Optional[str] = None,
    trained: Optional[bool] = None,
    seed: Optional[int] = None,
    min_size: Optional[tuple[int, int]] = None,
    max_size: Optional[tuple[int, int]] = None,
    optimize: bool = True,
) -> Path:
    """Export ``model``'s graphs to ``out_dir`` and write the manifest; returns the manifest's path.

    ``sizes``: image size (H, W) of the sample inputs (the optimisation size; multiples of
    ``model.alignment``); every graph still takes dynamic batch, height and width.
    ``graphs``: a subset of ``GRAPH_KINDS`` (default all). ``optimize``: run the onnxscript optimizer
    (constant folding, rewrites); it is about half of the export time of the layout-heavy graphs.
    """
    import onnx

    from hpcm.runtime.codec import weights_digest

    if wkv not in WKV_ROUTES:
        raise ExportError(f"unknown --wkv {wkv!r}; use one of {', '.join(WKV_ROUTES)}")
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    size = _normalise_size(sizes)
    try:
        model.check_image_size(*size)
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    if (graphs is None or "forward" in graphs) and min(size) < 2 * model.alignment:
        # With one alignment tile per side torch.export specialises the image size inside the
        # progressive loop (found after minutes of tracing): refuse up front.
        raise ExportError(
            f"the forward graph needs a sample size of at least {2 * model.alignment}x{2 * model.alignment} "
            f"(two alignment tiles per side) to keep height/width dynamic; got {size[0]}x{size[1]}"
        )
    profile = {"min": list(min_size or size), "opt": list(size), "max": list(max_size or size)}
    for label, (h, w) in profile.items():
        if h <= 0 or w <= 0 or h % model.alignment or w % model.alignment:
            raise ExportError(f"{label} size {h}x{w} must be positive multiples of {model.alignment}")
    if not all(a <= b <= c for a, b, c in zip(profile["min"], profile["opt"], profile["max"])):
        raise ExportError("sizes must satisfy --min-size <= --opt-size <= --max-size in both dimensions")
    decay = max_abs_decay(model)
    if wkv == "decomposed":
        decay = check_decomposed_range(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    specs = graph_specs(model, size, batch=batch, names=graphs)
    dtype = PRECISIONS[precision]
    traced = model  # the model whose graphs are traced
    if dtype != torch.float32:
        reference_specs = specs
        traced = reduced_precision_copy(model, dtype).eval()
        specs = graph_specs(traced, size, batch=batch, names=graphs)
        for spec in specs:
            spec.module = ReducedPrecisionGraph(spec.module, dtype)
    entries = {}
    total_start = time.perf_counter()
    shared = SharedWeights(out_dir)
    for index, spec in enumerate(specs, 1):
        path = out_dir / f"{spec.name}.onnx"
        start = time.perf_counter()
        if spec.name == "forward":
            log(f"[{index}/{len(specs)}] forward: tracing the whole model, about 7 minutes on 2 CPU cores ...")
        expected = count_wkv_calls(spec) if wkv == "custom" else None
        if expected is not None and spec.name == "forward" and not isinstance(model.attn_s3, CrossAttentionCell):
            # The last step's new context feeds nothing, so the exporter drops its cell's WKV call.
            expected -= 1
        with wkv_route(wkv), export_friendly_entropy(traced):
            try:
                export_graph(spec, path, opset=opset, max_tiles=max(2, 8192 // model.alignment), optimize=optimize)
            except ExportError:
                raise
            except Exception as exc:
                raise ExportError(f"{spec.name}: torch.onnx.export failed: {_exception_summary(exc)}") from exc
        export_s = time.perf_counter() - start
        external = shared.externalize(path)
        summary = check_graph(path, wkv, expected)
        if dtype != torch.float32:
            summary["error_vs_float32"] = reduced_precision_error(reference_specs[index - 1], spec)
        elapsed = time.perf_counter() - start
        entries[spec.name] = {
            "file": path.name,
            "sha256": file_sha256(path),
            "bytes": path.stat().st_size,
            **external,
            **summary,
            "sample_input_shapes": {n: list(t.shape) for n, t in spec.inputs.items()},
            "spatial_unit": spec.input_units,
            "export_seconds": round(export_s, 2),
            **spec.meta,
        }
        reduced_note = ""
        if "error_vs_float32" in summary:
            worst = max(e["relative"] for e in summary["error_vs_float32"].values())
            reduced_note = f", {precision} vs float32 eager: max relative error {worst:.1e}"
        log(f"[{index}/{len(specs)}] {spec.name}: {summary['nodes']} nodes, {summary['wkv_nodes']} "
            f"{CONTRACT.op_type}, {(path.stat().st_size + external['external_bytes']) / 1e6:.1f} MB, "
            f"{elapsed:.1f} s{reduced_note}")
    log(f"{WEIGHTS_NAME}: {shared.size / 1e6:.1f} MB holds the {shared.graph_bytes / 1e6:.1f} MB of weights "
        f"the graphs reference")

    if model.has_entropy_tables:
        import numpy as np
        from hpcm.models.hpcm import ENTROPY_TABLE_BUFFERS

        tables_path = out_dir / ENTROPY_TABLES_NAME
        np.savez(tables_path, **{n: getattr(model, n).detach().cpu().numpy() for n in ENTROPY_TABLE_BUFFERS})
        tables = {"file": tables_path.name, "sha256": file_sha256(tables_path)}
    else:
        tables = {"stored": "in the checkpoint" if checkpoint else "not computed (run model.update() first)",
                  "checkpoint": checkpoint}

    manifest = {
        "format": "hpcm-rwkv-onnx-export",
        "format_version": 1,
        "variant": model.spec.to_dict(),
        "alignment": model.alignment,
        "checkpoint": checkpoint,
        "trained_weights": trained,
        "seed": seed,
        "weights_digest": weights_digest(model).hex(),
        "wkv": wkv,
        "wkv_contract": json.loads(CONTRACT_PATH.read_text()),
        "max_abs_decay": decay,
        "precision": precision,
        # Every graph takes and returns float32; --precision sets the compute dtype inside.
        "io_dtype": "float32",
        "opset": opset,
        "exporter": "torch.onnx.export(dynamo=True, dynamic_shapes=...)",
        "onnxscript_optimized": optimize,
        "sample_size": list(size),
        # Image sizes (pixels) deployment engines should accept; the graphs themselves are dynamic.
        "profile": profile,
        "dynamic_dims": {
            "batch": "batch",
            "spatial": "per graph, the smallest input's height/width are the roots 'height'/'width'; larger "
                       "inputs and outputs are integer multiples of them (see each graph's inputs/outputs)",
            "valid_sizes": f"image sides must be multiples of {model.alignment}; a graph's inputs must have "
                           "the sides the model gives them at that scale (spatial_unit per alignment tile)",
        },
        "steps": [{"step": i, "scale": ("s1", "s2", "s3")[s.scale], "part": s.part,
                   "graph": None if s.adaptor is None else f"step{i:02d}", "last_of_scale": s.last_of_scale}
                  for i, s in enumerate(STEPS)],
        "graphs": entries,
        # Initializers of every graph, each distinct tensor once (ONNX external data).
        "weights_file": {"file": WEIGHTS_NAME, "sha256": file_sha256(shared.path), "bytes": shared.size,
                         "referenced_bytes": shared.graph_bytes},
        "entropy_tables": tables,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, **_optional_versions()},
        "total_export_seconds": round(time.perf_counter() - total_start, 2),
    }
    manifest_path = out_dir / MANIFEST_NAME
    manifest_path.write_text(json.dumps(manifest, indent=2))
    log(f"wrote {len(entries)} graphs and {manifest_path}")
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
