"""ONNX export: custom-node contract, dynamic shapes, manifest, and ONNX Runtime parity (CPU).

Exports stay small (128x128 phase2 samples, one or two graphs per export) to keep this file at
a couple of minutes on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

from hpcm.cli.export_cmds import export_main  # noqa: E402
from hpcm.errors import ExportError  # noqa: E402
from hpcm.export.artifact import WEIGHTS_NAME, ExportDir  # noqa: E402
from hpcm.export.graph_checks import FORBIDDEN_OPS  # noqa: E402
from hpcm.export.onnx_export import export_model  # noqa: E402
from hpcm.export.tracing import graph_specs  # noqa: E402
from hpcm.models import build_model  # noqa: E402
from hpcm.runtime.runners.onnxruntime import OnnxRuntimeRunner, cpu_session  # noqa: E402

from .graph_parity import graph_outputs, relative_error  # noqa: E402
from .hostile import write_manifest  # noqa: E402
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
         "--graph", "step01"],
    )
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope="module")
def decomposed_export(tmp_path_factory, phase2):
    out = tmp_path_factory.mktemp("decomposed")
    manifest = export_model(phase2, out, wkv="decomposed", size=SIZE, graphs=["step01"])
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
    assert "torchvision" not in output


def test_custom_node_contract(custom_export, phase2):
    out, _ = custom_export
    model = onnx.load(str(out / "step01.onnx"))
    nodes = _wkv_nodes(model)
    assert len(nodes) == 1
    for node in nodes:
        assert node.domain == CONTRACT.domain
        attrs = {a.name: onnx.helper.get_attribute_value(a).decode() for a in node.attribute}
        assert attrs == CONTRACT.node_attributes(phase2.spec.wkv)
        assert len(node.input) == 4 and len(node.output) == 1
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets[CONTRACT.domain] == CONTRACT.opset_version
    assert opsets.get("", opsets.get("ai.onnx")) == 18
    assert not {n.op_type for n in model.graph.node} & set(FORBIDDEN_OPS)


def test_export_of_contract_version_1_opens_and_runs_exact(custom_export, phase2, tmp_path):
    """An export written before the mode attribute (contract version 1: nodes without ``mode``,
    ``plugin_version`` "1", opset 1 of the domain) opens and runs, as the exact formula it computed."""
    out, _ = custom_export
    old = tmp_path / "version1"
    shutil.copytree(out, old)
    graph = old / "step01.onnx"
    model = onnx.load(str(graph), load_external_data=False)
    for node in _wkv_nodes(model):
        attributes = [onnx.helper.make_attribute("plugin_version", "1"),
                      onnx.helper.make_attribute("plugin_namespace", CONTRACT.plugin_namespace)]
        del node.attribute[:]
        node.attribute.extend(attributes)
    next(o for o in model.opset_import if o.domain == CONTRACT.domain).version = 1
    onnx.save(model, str(graph))
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["graphs"]["step01"]["file"].update(sha256=hashlib.sha256(graph.read_bytes()).hexdigest(),
                                                bytes=graph.stat().st_size)
    contract = manifest["wkv_contract"]
    contract.update(plugin_version="1", opset_version=1, formula=contract["modes"][0]["formula"])
    for key in ("earlier_plugin_versions", "modes"):
        del contract[key]
    contract["attributes"] = [a for a in contract["attributes"] if a["name"] != "mode"]
    write_manifest(old, manifest)  # an export of that era, re-digested as this format records it

    with OnnxRuntimeRunner(ExportDir.open(old)) as runner:
        for _, name, got, expected in graph_outputs(runner, phase2, SIZE, ["step01"], seed=4):
            assert relative_error(got, expected) <= 1e-5, name


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
    assert manifest["trained_weights"] is False and manifest["seed"] == 0
    tables = out / manifest["codec_file"]["file"]  # the CLI computes the CDF tables once and ships them
    assert hashlib.sha256(tables.read_bytes()).hexdigest() == manifest["codec_file"]["sha256"]
    with np.load(tables) as stored:
        assert stored["quantized_cdf_y"].shape[0] == 60 and stored["quantized_cdf_z"].shape[0] == 256
        assert stored["means_hyper"].shape == (1, 256, 1, 1)
    entry = manifest["graphs"]["step01"]
    data = (out / entry["file"]["file"]).read_bytes()
    assert entry["file"]["sha256"] == hashlib.sha256(data).hexdigest()
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
    """phase4's s3 prior holds 3 + 2 RWKV blocks: with the s3 cell, six WKV nodes in a s3 step graph."""
    model = build_model("phase4", seed=0).eval()
    model.update()
    manifest = json.loads(export_model(model, tmp_path, wkv="custom", size=SIZE, graphs=["step05"]).read_text())
    onnx_model = onnx.load(str(tmp_path / "step05.onnx"))
    assert len(_wkv_nodes(onnx_model)) == 6 == manifest["graphs"]["step05"]["wkv_nodes"]


def test_decomposed_refuses_large_decay(tmp_path):
    model = build_model("phase2", seed=0).eval()
    model.update()
    with torch.no_grad():
        model.attn_s3.block.spatial_mix.decay[0] = 100.0
    with pytest.raises(ExportError, match="--wkv custom"):
        export_model(model, tmp_path / "out", wkv="decomposed", size=SIZE, graphs=["step01"])
    assert not list(tmp_path.iterdir())  # nothing written, not even a partial folder


def test_cli_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(export_main, ["--variant", "nope", "-o", str(tmp_path)])
    assert result.exit_code != 0 and "unknown variant" in result.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    result = runner.invoke(export_main, ["--checkpoint", str(bad), "-o", str(tmp_path / "out")])
    assert result.exit_code != 0 and "not a readable PyTorch checkpoint" in result.output
    result = runner.invoke(export_main, ["--checkpoint", str(bad), "-o", str(tmp_path)])  # -o checked first
    assert result.exit_code != 0 and "not an hpcm-export folder" in result.output
    result = runner.invoke(export_main, ["--opt-size", "100", "100", "-o", str(tmp_path / "out"), "--graph", "step01"])
    assert result.exit_code != 0 and "multiples of" in result.output


def test_custom_graph_runs_on_ort_extensions(custom_export, phase2):
    """The custom-node graph on CPU through onnxruntime-extensions (domain rewritten in a copy)."""
    pytest.importorskip("onnxruntime_extensions")
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
        export_model(phase2, tmp_path, wkv="decomposed", size=SIZE, graphs=["forward"])


@pytest.mark.parametrize("variant", ["baseline", "phase1", "phase2", "phase3", "phase4"])
def test_every_variant_exports_and_matches_eager_at_two_sizes(tmp_path, variant):
    """One s3 step graph per variant (cross-attention, RWKV cell, RWKV prior) and the s2->s3
    context fusion for phase3's RWKV fusion net, exported once and run on ONNX Runtime at two image sizes."""
    pytest.importorskip("onnxruntime_extensions")
    model = build_model(variant, seed=0).eval()
    model.update()
    a = model.alignment
    graphs = ["step06"] + (["context_fusion_s3"] if variant == "phase3" else [])
    export_model(model, tmp_path, wkv="custom", size=(a, a), graphs=graphs)
    with OnnxRuntimeRunner(ExportDir.open(tmp_path)) as runner:
        for size in ((a, a), (a, 2 * a)):
            for graph, name, got, expected in graph_outputs(runner, model, size, graphs, seed=3):
                assert got.shape == expected.shape
                assert relative_error(got, expected) <= 1e-5, (variant, size, graph, name)


def test_profile_sizes_are_recorded_and_checked(tmp_path):
    result = CliRunner().invoke(export_main, ["--variant", "phase2", "-o", str(tmp_path), "--graph", "hyper_synthesis",
                                              "--opt-size", "256", "256", "--min-size", "128", "128",
                                              "--max-size", "1024", "2048"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["profile"] == {"min": [128, 128], "opt": [256, 256], "max": [1024, 2048], "max_batch": 1}
    bad = CliRunner().invoke(export_main, ["--variant", "phase2", "-o", str(tmp_path / "bad"), "--graph",
                                           "hyper_synthesis", "--max-size", "128", "128"])
    assert bad.exit_code != 0 and "min <= opt <= max" in bad.output


def test_graphs_share_one_weights_file(tmp_path, phase2):
    """Steps 5 and 6 run the same s3 prior: its tensors are stored once, and both graphs still run."""
    manifest = json.loads(export_model(phase2, tmp_path, size=SIZE, graphs=["step05", "step06"]).read_text())
    weights = manifest["weights_file"]
    data = (tmp_path / WEIGHTS_NAME).read_bytes()
    assert weights["bytes"] == len(data) and weights["sha256"] == hashlib.sha256(data).hexdigest()
    referenced = 0
    for graph in ("step05", "step06"):
        entry = manifest["graphs"][graph]
        model = onnx.load(str(tmp_path / entry["file"]["file"]), load_external_data=False)
        external = [{e.key: e.value for e in t.external_data} for t in model.graph.initializer if t.external_data]
        assert {e["location"] for e in external} == {WEIGHTS_NAME}
        graph_bytes = sum(int(e["length"]) for e in external)
        assert entry["file"]["bytes"] < 0.05 * graph_bytes  # the .onnx keeps structure and offsets only
        referenced += graph_bytes
    assert len(data) < 0.7 * referenced  # the shared prior is stored once
    assert manifest["graphs"]["step05"]["weights_sha256"] != manifest["graphs"]["step06"]["weights_sha256"]
    with OnnxRuntimeRunner(ExportDir.open(tmp_path)) as runner:
        for graph, name, got, expected in graph_outputs(runner, phase2, SIZE, ["step05", "step06"], seed=1):
            assert relative_error(got, expected) <= 1e-5, (graph, name)


def test_step_graphs_of_one_scale_are_cloned_exactly(tmp_path, phase2):
    """step06 cloned from the traced step05 (renamed adaptor and adaptive parameter, every value from
    the model) is the graph tracing step06 gives: same nodes, same initializers, same outputs."""
    export_model(phase2, tmp_path / "both", size=SIZE, graphs=["step05", "step06"])
    export_model(phase2, tmp_path / "alone", size=SIZE, graphs=["step06"])
    cloned = onnx.load(str(tmp_path / "both" / "step06.onnx"))
    traced = onnx.load(str(tmp_path / "alone" / "step06.onnx"))
    assert [(n.op_type, list(n.input), list(n.output)) for n in cloned.graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in traced.graph.node]
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in traced.graph.initializer}
    assert {t.name for t in cloned.graph.initializer} == set(initializers)
    assert "model.y_spatial_prior_adaptor_list_s3.0.weight" in initializers  # step06 uses adaptor 0
    for tensor in cloned.graph.initializer:
        assert np.array_equal(onnx.numpy_helper.to_array(tensor), initializers[tensor.name]), tensor.name
    spec = graph_specs(phase2, SIZE, names=["step06"], seed=5)[0]
    feed = {k: v.numpy() for k, v in spec.inputs.items()}
    for folder in ("both", "alone"):
        with torch.no_grad():
            expected = spec.module(*spec.inputs.values())
        got = cpu_session(tmp_path / folder / "step06.onnx").run(None, feed)
        for e, g in zip(expected, got):
            assert np.abs(g - e.numpy()).max() <= 1e-5 * np.abs(e.numpy()).max()
