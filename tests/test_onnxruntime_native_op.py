"""The Bi-WKV node on ONNX Runtime. The native custom op (biwkv_ort_op.cpp) is built against ONNX Runtime's
C API header, which is not part of the repository: its tests skip unless ONNXRUNTIME_INCLUDE_DIR or
HPCM_BIWKV_ORT_OP is set. The Python route (onnxruntime-extensions) runs wherever that package is."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from hpcm.plugins.biwkv import WKV_MODES, biwkv_scan  # noqa: E402
from hpcm.plugins.biwkv.contract import CONTRACT  # noqa: E402
from hpcm.plugins.biwkv.cpu import ORT_INCLUDE_ENV, OrtOpUnavailable, biwkv_cpu, ort_op_library  # noqa: E402


@pytest.fixture(scope="module")
def library():
    try:
        return ort_op_library()
    except OrtOpUnavailable as exc:
        pytest.skip(f"native ONNX Runtime op not available ({exc})")


# A node of contract version 1, as exports made before the mode attribute hold: no mode, opset 1.
VERSION_1_ATTRIBUTES = {"plugin_version": "1", "plugin_namespace": CONTRACT.plugin_namespace}


def _single_node_model(elem_type: int, mode: str = CONTRACT.default_mode, attributes: dict | None = None,
                       opset: int = CONTRACT.opset_version):
    """One contract node computing ``mode`` with symbolic B, C, T, as the exporter writes it (or with
    ``attributes`` and ``opset`` instead, as an export of another contract version holds it)."""
    helper = onnx.helper
    node = helper.make_node(CONTRACT.op_type, ["w", "u", "k", "v"], ["y"], domain=CONTRACT.domain,
                            **(attributes if attributes is not None else CONTRACT.node_attributes(mode)))
    dims = ["B", "C", "T"]
    graph = helper.make_graph(
        [node], "biwkv",
        [helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, ["C"]),
         helper.make_tensor_value_info("u", onnx.TensorProto.FLOAT, ["C"]),
         helper.make_tensor_value_info("k", elem_type, dims), helper.make_tensor_value_info("v", elem_type, dims)],
        [helper.make_tensor_value_info("y", elem_type, dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid(CONTRACT.domain, opset)])
    return model.SerializeToString()


def _session(library, elem_type, mode: str = CONTRACT.default_mode, **version):
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(library))
    return ort.InferenceSession(_single_node_model(elem_type, mode, **version), options,
                                providers=["CPUExecutionProvider"])


def _inputs(B, C, T, seed):
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(C, generator=g) * 6 - 3) / T
    u = (torch.rand(C, generator=g) * 4 - 2) / T
    return w, u, torch.rand(B, C, T, generator=g) * 8 - 4, torch.rand(B, C, T, generator=g) * 2 - 1


@pytest.mark.parametrize("mode", CONTRACT.modes)
@pytest.mark.parametrize("shape", [(1, 4, 1), (2, 32, 20), (2, 32, 33), (1, 64, 1536)])
def test_float32_node_matches_float64_scan(library, shape, mode):
    w, u, k, v = _inputs(*shape, seed=shape[2])
    feed = {n: t.numpy() for n, t in zip("wukv", (w, u, k, v))}
    (y,) = _session(library, onnx.TensorProto.FLOAT, mode).run(None, feed)
    assert np.abs(y - WKV_MODES[mode].reference(w, u, k, v).numpy()).max() <= 1e-6
    assert np.array_equal(y, biwkv_cpu(w, u, k, v, mode).numpy())


@pytest.mark.parametrize("mode", CONTRACT.modes)
def test_float16_node(library, mode):
    w, u, k, v = _inputs(2, 16, 200, seed=1)
    feed = {"w": w.numpy(), "u": u.numpy(), "k": k.half().numpy(), "v": v.half().numpy()}
    (y,) = _session(library, onnx.TensorProto.FLOAT16, mode).run(None, feed)
    assert y.dtype == np.float16
    assert np.array_equal(y, biwkv_cpu(w, u, k.half(), v.half(), mode).numpy())


@pytest.mark.parametrize("mode", CONTRACT.modes)
def test_python_route_computes_each_mode(tmp_path, mode):
    """The route without the native library: the node's mode in Python, T not a multiple of 32 and T < 32."""
    pytest.importorskip("onnxruntime_extensions")
    from hpcm.runtime.runners.onnxruntime import cpu_session

    path = tmp_path / "node.onnx"
    path.write_bytes(_single_node_model(onnx.TensorProto.FLOAT, mode))
    for shape in ((2, 6, 20), (2, 6, 100)):
        w, u, k, v = _inputs(*shape, seed=shape[2])
        (y,) = cpu_session(path, route="python").run(None, {n: t.numpy() for n, t in zip("wukv", (w, u, k, v))})
        assert np.abs(y - WKV_MODES[mode].reference(w, u, k, v).numpy()).max() <= 1e-5, shape


def test_python_route_runs_version_1_nodes_exact(tmp_path):
    pytest.importorskip("onnxruntime_extensions")
    from hpcm.runtime.runners.onnxruntime import cpu_session

    path = tmp_path / "node.onnx"
    path.write_bytes(_single_node_model(onnx.TensorProto.FLOAT, attributes=VERSION_1_ATTRIBUTES, opset=1))
    w, u, k, v = _inputs(2, 8, 100, seed=5)
    (y,) = cpu_session(path, route="python").run(None, {n: t.numpy() for n, t in zip("wukv", (w, u, k, v))})
    assert np.abs(y - biwkv_scan(w, u, k, v).numpy()).max() <= 1e-5


def test_version_1_node_runs_exact(library):
    """Exports of contract version 1 (no mode attribute, opset 1) still run, computing the exact formula."""
    w, u, k, v = _inputs(2, 8, 100, seed=5)
    session = _session(library, onnx.TensorProto.FLOAT, attributes=VERSION_1_ATTRIBUTES, opset=1)
    (y,) = session.run(None, {n: t.numpy() for n, t in zip("wukv", (w, u, k, v))})
    assert np.abs(y - biwkv_scan(w, u, k, v).numpy()).max() <= 1e-6


def test_unknown_mode_is_refused_when_the_session_starts(library):
    attributes = {**CONTRACT.node_attributes(CONTRACT.default_mode), "mode": "chunky"}
    with pytest.raises(Exception, match="unknown mode 'chunky'.*exact, vrwkv"):
        _session(library, onnx.TensorProto.FLOAT, attributes=attributes)


def test_wrong_shapes_are_reported(library):
    w, u, k, v = _inputs(1, 8, 10, seed=2)
    session = _session(library, onnx.TensorProto.FLOAT)
    with pytest.raises(Exception, match="w must be"):
        session.run(None, {"w": w[:4].numpy(), "u": u.numpy(), "k": k.numpy(), "v": v.numpy()})
    with pytest.raises(Exception, match="k and v must both be"):
        session.run(None, {"w": w.numpy(), "u": u.numpy(), "k": k.numpy(), "v": v[..., :5].contiguous().numpy()})


def test_exported_graph_runs_natively(library, tmp_path, phase2):
    """A step graph on the backend's native route: no domain rewrite, same results as eager."""
    from hpcm.export.artifact import ExportDir
    from hpcm.export.onnx_export import export_model
    from hpcm.runtime.runners.onnxruntime import OnnxRuntimeRunner, wkv_op_route

    from .graph_parity import graph_outputs, relative_error

    assert wkv_op_route() == "native"
    export_model(phase2, tmp_path, size=(128, 128), graphs=["step06"])
    runner = OnnxRuntimeRunner(ExportDir.open(tmp_path))
    assert "wkv-custom-native" in runner.fingerprint
    assert json.loads((tmp_path / "manifest.json").read_text())["graphs"]["step06"]["wkv_nodes"] == 1
    with runner:
        for size in ((128, 128), (128, 256)):
            for graph, name, got, expected in graph_outputs(runner, phase2, size, ["step06"], seed=3):
                assert relative_error(got, expected) <= 1e-5, (size, name)


def test_missing_header_says_what_to_set(monkeypatch, tmp_path):
    monkeypatch.delenv("HPCM_BIWKV_ORT_OP", raising=False)
    monkeypatch.delenv(ORT_INCLUDE_ENV, raising=False)
    with pytest.raises(OrtOpUnavailable, match=ORT_INCLUDE_ENV):
        ort_op_library()
    with pytest.raises(OrtOpUnavailable, match="does not exist"):
        ort_op_library(tmp_path)
