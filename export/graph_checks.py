"""What an export checks: the Bi-WKV route a model can take, the decomposed route's float32 range,
and every written graph (ONNX checker, shape inference, no data-dependent ops, the custom node's
contract and count).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Optional

import torch

from hpcm.errors import ExportError
from hpcm.log import LOG
from hpcm.models.hpcm import HPCM
from hpcm.plugins.biwkv import WKV_MODES
from hpcm.plugins.biwkv.contract import CONTRACT
from hpcm.plugins.biwkv.op import CLOSED_FORM_SPREAD_LIMIT

FORBIDDEN_OPS = ("NonZero", "ScatterND", "Compress")
# Room left for range(k) inside the closed form's float32 exponent budget (CLOSED_FORM_SPREAD_LIMIT, the op's).
DECAY_MARGIN = 20.0


def max_abs_decay(model: HPCM) -> float:
    values = [m.decay.detach().abs().max().item() for m in model.modules() if hasattr(m, "decay")
              and isinstance(getattr(m, "decay"), torch.Tensor)]
    return max(values, default=0.0)


def default_wkv_route(model: HPCM) -> str:
    """``custom`` where the model's Bi-WKV mode has the custom node, kernel and plugins (every mode of the
    contract), else ``decomposed``."""
    return "custom" if WKV_MODES[model.spec.wkv].custom_node else "decomposed"


def check_wkv_route(model: HPCM, wkv: str) -> None:
    mode = WKV_MODES[model.spec.wkv]
    if wkv == "custom" and not mode.custom_node:
        raise ExportError(
            f"{model.spec.name} computes the Bi-WKV in the {mode.name} mode ({mode.doc}), which the contract's "
            f"op does not list among its modes ({', '.join(CONTRACT.modes)}): export it with --wkv decomposed "
            f"(standard ONNX ops)"
        )


def wkv_route(model: HPCM, wkv: Optional[str] = None) -> str:
    """The ``--wkv`` route ``model`` is exported with: ``wkv`` if its Bi-WKV mode allows it
    (``check_wkv_route``), else by default ``default_wkv_route`` (said when that is not the custom node)."""
    if wkv is None:
        wkv = default_wkv_route(model)
        if wkv != "custom":
            LOG.info(f"{model.spec.name} computes the Bi-WKV in the {model.spec.wkv} mode: exporting it as standard "
                     f"ONNX ops (--wkv {wkv})")
    check_wkv_route(model, wkv)
    return wkv


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


def check_graph(path: Path, route: str, expected_wkv: Optional[int] = None,
                mode: str = CONTRACT.default_mode) -> dict:
    """checker + shape inference + custom-node contract checks (each node computing ``mode``); returns a
    summary for the manifest."""
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
        for key, value in CONTRACT.node_attributes(mode).items():
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
