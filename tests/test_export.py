"""ONNX export: custom-node contract, dynamic shapes, manifest, and ONNX Runtime parity (CPU).

Exports stay small (128x128 phase2 samples, one or two graphs per export) to keep this file at
a couple of minutes on 2 cores.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

from hpcm.cli.export_cmds import export_main  # noqa: E402
from hpcm.export.onnx_export import (  # noqa: E402
    FORBIDDEN_OPS, ExportError, count_wkv_calls, export_model, graph_specs,
)
from hpcm.models import build_model  # noqa: E402
from hpcm.plugins.biwkv.contract import CONTRACT  # noqa: E402

SIZE = (128, 128)
OTHER_SIZE = (128, 256)


@pytest.fixture(scope="module")
def custom_export(tmp_path_factory):
    """phase2 step01 with the custom WKV node, through the hpcm-export command."""
    out = tmp_path_factory.mktemp("custom")
    result = CliRunner().invoke(
        export_main,
        ["--variant", "phase2", "-o", str(out), "--wkv", "custom", "--opt-size", "128", "128",
         "--graph", "step01", "--no-optimize"],
    )
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope="module")
def decomposed_export(tmp_path_factory, phase2):
    out = tmp_path_factory.mktemp("decomposed")
    manifest = export_model(phase2, out, wkv="decomposed", sizes=SIZE, graphs=["step01"], optimize=False,
                            log=lambda _: None)
    return out, json.loads(manifest.read_text())


def _session(path):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _wkv_nodes(model):
    return [n for n in model.graph.node if n.op_type == CONTRACT.op_type]


def test_cli_notices_untrained_weights(custom_export):
    _, output = custom_export
    assert "UNTRAINED" in output
    assert "[1/1] step01" in output


def test_custom_node_contract(custom_export, phase2):
    out, _ = custom_export
    model = onnx.load(str(out / "step01.onnx"))
    nodes = _wkv_nodes(model)
    spec = graph_specs(phase2, SIZE, names=["step01"])[0]
    assert len(nodes) == count_wkv_calls(spec) == 1
    for node in nodes:
        assert node.domain == CONTRACT.domain
        attrs = {a.name: onnx.helper.get_attribute_value(a).decode() for a in node.attribute}
        assert attrs == CONTRACT.onnx_attributes
        assert len(node.input) == 4 and len(node.output) == 1
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets[CONTRACT.domain] == CONTRACT.opset_version
    assert opsets.get("", opsets.get("ai.onnx")) == 18
    assert not {n.op_type for n in model.graph.node} & set(FORBIDDEN_OPS)


def test_dynamic_dims(custom_export):
    out, _ = custom_export
    model = onnx.load(str(out / "step01.onnx"))
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param, f"{value.name}: batch is static"
        assert dims[2].dim_param and dims[3].dim_param, f"{value.name}: height/width are static"
        assert dims[1].dim_value in (320, 640)
    inputs = {v.name: v for v in model.graph.input}
    assert set(inputs) == {"context_next", "y_hat"}
    assert {o.name for o in model.graph.output} == {"scales", "means", "new_context_next"}


def test_manifest(custom_export):
    out, _ = custom_export
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["wkv"] == "custom"
    assert manifest["variant"]["name"] == "phase2"
    assert manifest["wkv_contract"]["op_type"] == CONTRACT.op_type
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["versions"]["onnx"] == onnx.__version__
    assert manifest["trained_weights"] is False
    tables = out / manifest["entropy_tables"]["file"]  # the CLI computes the CDF tables once and ships them
    assert hashlib.sha256(tables.read_bytes()).hexdigest() == manifest["entropy_tables"]["sha256"]
    import numpy as np

    with np.load(tables) as stored:
        assert stored["quantized_cdf_y"].shape[0] == 60 and stored["quantized_cdf_z"].shape[0] == 256
    entry = manifest["graphs"]["step01"]
    data = (out / entry["file"]).read_bytes()
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["wkv_nodes"] == 1
    assert entry["inputs"]["context_next"][1] == 640
    assert isinstance(entry["inputs"]["context_next"][0], str)


def test_decomposed_has_only_standard_ops(decomposed_export):
    out, manifest = decomposed_export
    model = onnx.load(str(out / "step01.onnx"))
    assert not _wkv_nodes(model)
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    assert CONTRACT.domain not in {o.domain for o in model.opset_import}
    assert manifest["graphs"]["step01"]["wkv_nodes"] == 0


@pytest.mark.parametrize("size,batch", [(SIZE, 1), (OTHER_SIZE, 2)])
def test_decomposed_step_matches_eager(decomposed_export, phase2, size, batch):
    """The same graph at the export size and at another size and batch (dynamic shapes)."""
    out, _ = decomposed_export
    spec = graph_specs(phase2, size, batch=batch, names=["step01"], seed=1)[0]
    with torch.no_grad():
        expected = spec.module(*spec.inputs.values())
    got = _session(out / "step01.onnx").run(None, {k: v.numpy() for k, v in spec.inputs.items()})
    for e, g in zip(expected, got):
        e = e.numpy()
        assert g.shape == e.shape
        assert np.abs(g - e).max() <= 1e-5 * np.abs(e).max()


def test_other_variant_step_graph(tmp_path):
    """phase4's s3 prior holds two RWKV blocks: three WKV nodes in a s3 step graph."""
    model = build_model("phase4", seed=0).eval()
    manifest = json.loads(export_model(model, tmp_path, wkv="custom", sizes=SIZE, graphs=["step05"],
                                       optimize=False, log=lambda _: None).read_text())
    onnx_model = onnx.load(str(tmp_path / "step05.onnx"))
    assert len(_wkv_nodes(onnx_model)) == 3 == manifest["graphs"]["step05"]["wkv_nodes"]


def test_decomposed_refuses_large_decay(tmp_path):
    model = build_model("phase2", seed=0).eval()
    with torch.no_grad():
        model.attn_s3.block.spatial_mix.decay[0] = 100.0
    with pytest.raises(ExportError, match="--wkv custom"):
        export_model(model, tmp_path, wkv="decomposed", sizes=SIZE, graphs=["step01"], log=lambda _: None)
    assert not list(tmp_path.glob("*.onnx"))


def test_cli_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(export_main, ["--variant", "nope", "-o", str(tmp_path)])
    assert result.exit_code != 0 and "unknown variant" in result.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    result = runner.invoke(export_main, ["--checkpoint", str(bad), "-o", str(tmp_path)])
    assert result.exit_code != 0 and "not a readable PyTorch checkpoint" in result.output
    result = runner.invoke(export_main, ["--opt-size", "100", "100", "-o", str(tmp_path), "--graph", "step01"])
    assert result.exit_code != 0 and "multiples of" in result.output


def test_custom_graph_runs_on_ort_extensions(custom_export, phase2):
    """The custom-node graph on CPU through onnxruntime-extensions (domain rewritten in a copy)."""
    pytest.importorskip("onnxruntime_extensions")
    from hpcm.runtime.onnxruntime_backend import cpu_session

    out, _ = custom_export
    spec = graph_specs(phase2, OTHER_SIZE, batch=2, names=["step01"], seed=2)[0]
    with torch.no_grad():
        expected = spec.module(*spec.inputs.values())
    got = cpu_session(out / "step01.onnx").run(None, {k: v.numpy() for k, v in spec.inputs.items()})
    for e, g in zip(expected, got):
        e = e.numpy()
        assert g.shape == e.shape
        assert np.abs(g - e).max() <= 1e-5 * np.abs(e).max()


def test_forward_needs_two_tiles(tmp_path, phase2):
    with pytest.raises(ExportError, match="at least 256x256"):
        export_model(phase2, tmp_path, wkv="decomposed", sizes=SIZE, graphs=["forward"], log=lambda _: None)


@pytest.mark.slow
def test_decomposed_forward_matches_eager(tmp_path, phase2):
    """Whole forward (decomposed WKV) on ORT vs eager PyTorch, at 128x128 and at 256x128 with batch 2.

    Exporting the forward takes 6-9 minutes on 2 cores (256x256 sample); HPCM_SKIP_SLOW_EXPORT=1 skips it
    for quick local runs, and HPCM_FORWARD_ONNX reuses an existing export
    (``hpcm-export --wkv decomposed --graph forward --no-optimize``).
    """
    import os

    path = os.environ.get("HPCM_FORWARD_ONNX")
    if not path:
        if os.environ.get("HPCM_SKIP_SLOW_EXPORT") == "1":
            pytest.skip("HPCM_SKIP_SLOW_EXPORT=1: the forward export takes 6-9 min on 2 cores")
        export_model(phase2, tmp_path, wkv="decomposed", sizes=(256, 256), graphs=["forward"], optimize=False,
                     log=lambda _: None)
        path = tmp_path / "forward.onnx"
    session = _session(path)
    for size, batch in ((SIZE, 1), (OTHER_SIZE[::-1], 2)):
        x = torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            expected = phase2(x, training=False)
        x_hat, y_lik, z_lik = session.run(None, {"x": x.numpy()})
        assert x_hat.shape == tuple(expected["x_hat"].shape)
        assert np.abs(x_hat - expected["x_hat"].numpy()).max() <= 1e-4
        assert np.abs(y_lik - expected["likelihoods"]["y"].numpy()).max() <= 1e-5
        assert np.abs(z_lik - expected["likelihoods"]["z"].numpy()).max() <= 1e-5


@pytest.mark.parametrize("variant", ["baseline", "phase1", "phase2", "phase3", "phase4"])
def test_every_variant_exports_and_matches_eager_at_two_sizes(tmp_path, variant):
    """One s3 step graph per variant (cross-attention, RWKV cell, RWKV prior) and the s2->s3
    transition for phase3's RWKV fusion, exported once and run on ONNX Runtime at two image sizes."""
    pytest.importorskip("onnxruntime_extensions")
    from hpcm.runtime.onnxruntime_backend import OnnxRuntimeBackend

    model = build_model(variant, seed=0).eval()
    a = model.alignment
    graphs = ["step06"] + (["transition_s2_s3"] if variant == "phase3" else [])
    export_model(model, tmp_path, wkv="custom", sizes=(a, a), graphs=graphs, optimize=False, log=lambda _: None)
    backend = OnnxRuntimeBackend(tmp_path)
    for size in ((a, a), (a, 2 * a)):
        for spec in graph_specs(model, size, names=graphs, seed=3):
            with torch.no_grad():
                expected = spec.module(*spec.inputs.values())
            got = backend.run(spec.name, dict(spec.inputs))
            for name, e in zip(spec.outputs, expected):
                assert got[name].shape == e.shape
                assert (got[name] - e).abs().max() <= 1e-5 * e.abs().max(), (variant, size, name)


def test_profile_sizes_are_recorded_and_checked(tmp_path):
    result = CliRunner().invoke(export_main, ["--variant", "phase2", "-o", str(tmp_path), "--graph", "hyper_synthesis",
                                              "--opt-size", "256", "256", "--min-size", "128", "128",
                                              "--max-size", "1024", "2048", "--no-optimize"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["profile"] == {"min": [128, 128], "opt": [256, 256], "max": [1024, 2048]}
    bad = CliRunner().invoke(export_main, ["--variant", "phase2", "-o", str(tmp_path / "bad"), "--graph",
                                           "hyper_synthesis", "--max-size", "128", "128"])
    assert bad.exit_code != 0 and "--max-size" in bad.output


def test_graphs_share_one_weights_file(tmp_path, phase2):
    """Steps 5 and 6 run the same s3 prior: its tensors are stored once, and both graphs still run."""
    from hpcm.export.shared_weights import WEIGHTS_NAME
    from hpcm.runtime.onnxruntime_backend import OnnxRuntimeBackend

    manifest = json.loads(export_model(phase2, tmp_path, sizes=SIZE, graphs=["step05", "step06"], optimize=False,
                                       log=lambda _: None).read_text())
    weights = manifest["weights_file"]
    data = (tmp_path / WEIGHTS_NAME).read_bytes()
    assert weights["bytes"] == len(data) and weights["sha256"] == hashlib.sha256(data).hexdigest()
    referenced = sum(manifest["graphs"][g]["external_bytes"] for g in ("step05", "step06"))
    assert referenced == weights["referenced_bytes"]
    assert len(data) < 0.7 * referenced  # the shared prior is stored once
    for graph in ("step05", "step06"):
        entry = manifest["graphs"][graph]
        assert entry["bytes"] < 0.05 * entry["external_bytes"]  # the .onnx keeps structure and offsets only
        model = onnx.load(str(tmp_path / entry["file"]), load_external_data=False)
        locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
        assert locations == {WEIGHTS_NAME}
    assert manifest["graphs"]["step05"]["weights_sha256"] != manifest["graphs"]["step06"]["weights_sha256"]
    backend = OnnxRuntimeBackend(tmp_path)
    for spec in graph_specs(phase2, SIZE, names=["step05", "step06"], seed=1):
        with torch.no_grad():
            expected = spec.module(*spec.inputs.values())
        got = backend.run(spec.name, dict(spec.inputs))
        for name, e in zip(spec.outputs, expected):
            assert (got[name] - e).abs().max() <= 1e-5 * e.abs().max()
