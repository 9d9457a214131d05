"""The native ONNX Runtime custom op (biwkv_ort_op.cpp): built against ONNX Runtime's C API header,
which is not part of the repository. Skips unless ONNXRUNTIME_INCLUDE_DIR or HPCM_BIWKV_ORT_OP is set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from hpcm.plugins.biwkv import biwkv_scan  # noqa: E402
from hpcm.plugins.biwkv.contract import CONTRACT  # noqa: E402
from hpcm.plugins.biwkv.cpu import ORT_INCLUDE_ENV, OrtOpUnavailable, biwkv_cpu, ort_op_library  # noqa: E402


@pytest.fixture(scope="module")
def library():
    try:
        return ort_op_library()
    except OrtOpUnavailable as exc:
        pytest.skip(f"native ONNX Runtime op not available ({exc})")


def _single_node_model(elem_type: int):
    """One contract node with symbolic B, C, T, as the exporter writes it."""
    helper = onnx.helper
    node = helper.make_node(CONTRACT.op_type, ["w", "u", "k", "v"], ["y"], domain=CONTRACT.domain,
                            **CONTRACT.onnx_attributes)
    dims = ["B", "C", "T"]
    graph = helper.make_graph(
        [node], "biwkv",
        [helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, ["C"]),
         helper.make_tensor_value_info("u", onnx.TensorProto.FLOAT, ["C"]),
         helper.make_tensor_value_info("k", elem_type, dims), helper.make_tensor_value_info("v", elem_type, dims)],
        [helper.make_tensor_value_info("y", elem_type, dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid(CONTRACT.domain, CONTRACT.opset_version)])
    return model.SerializeToString()


def _session(library, elem_type):
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(library))
    return ort.InferenceSession(_single_node_model(elem_type), options, providers=["CPUExecutionProvider"])


def _inputs(B, C, T, seed):
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(C, generator=g) * 6 - 3) / T
    u = (torch.rand(C, generator=g) * 4 - 2) / T
    return w, u, torch.rand(B, C, T, generator=g) * 8 - 4, torch.rand(B, C, T, generator=g) * 2 - 1


@pytest.mark.parametrize("shape", [(1, 4, 1), (2, 32, 33), (1, 64, 1536)])
def test_float32_node_matches_float64_scan(library, shape):
    w, u, k, v = _inputs(*shape, seed=shape[2])
    (y,) = _session(library, onnx.TensorProto.FLOAT).run(None, {n: t.numpy() for n, t in zip("wukv", (w, u, k, v))})
    assert np.abs(y - biwkv_scan(w, u, k, v).numpy()).max() <= 1e-6
    assert np.array_equal(y, biwkv_cpu(w, u, k, v).numpy())


def test_float16_node(library):
    w, u, k, v = _inputs(2, 16, 200, seed=1)
    feed = {"w": w.numpy(), "u": u.numpy(), "k": k.half().numpy(), "v": v.half().numpy()}
    (y,) = _session(library, onnx.TensorProto.FLOAT16).run(None, feed)
    assert y.dtype == np.float16
    assert np.array_equal(y, biwkv_cpu(w, u, k.half(), v.half()).numpy())


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
