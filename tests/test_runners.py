"""Every runner through the one interface: lifecycle, graph names, device rules, and outputs equal
to the eager model's (TensorRT skips with its reason where its libraries or a GPU are missing)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from hpcm.errors import RunnerError
from hpcm.export.artifact import ExportDir
from hpcm.models.graphs import GRAPHS
from hpcm.runtime.runners import RUNNERS, runner_class
from hpcm.runtime.session import open_runner

HAVE_ORT = importlib.util.find_spec("onnxruntime_extensions") is not None
HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()
SIZE = (128, 128)
GRAPHS_CHECKED = ["step05", "synthesis"]

RUNNER_CASES = [
    pytest.param("eager", id="eager"),
    pytest.param("onnxruntime", id="onnxruntime",
                 marks=pytest.mark.skipif(not HAVE_ORT, reason="needs onnxruntime and onnxruntime-extensions")),
    pytest.param("tensorrt", id="tensorrt",
                 marks=[pytest.mark.tensorrt, pytest.mark.gpu,
                        pytest.mark.skipif(not HAVE_TRT, reason="needs the TensorRT libraries and a CUDA GPU")]),
]


@pytest.fixture(scope="module")
def export(tmp_path_factory, phase2) -> ExportDir:
    from hpcm.export.onnx_export import export_model

    folder = tmp_path_factory.mktemp("runners") / "phase2"
    export_model(phase2, folder, size=SIZE, graphs=GRAPHS_CHECKED, seed=0)
    return ExportDir.open(folder)


def _inputs(graph: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {t.name: torch.randn(1, t.channel_count(320, 256), SIZE[0] // t.stride, SIZE[1] // t.stride, generator=g)
            for t in GRAPHS[graph].inputs}


@pytest.mark.parametrize("kind", RUNNER_CASES)
def test_runner_matches_eager_model(kind, phase2, export, tmp_path):
    options = {"cache_dir": tmp_path / "engines"} if kind == "tensorrt" else {}
    runner = open_runner(kind, model=phase2 if kind == "eager" else None, export=export, **options)
    assert runner.kind == kind and runner.fingerprint
    with pytest.raises(RunnerError, match="not active"):
        runner.run("synthesis", _inputs("synthesis", 0))
    with runner:
        assert set(GRAPHS_CHECKED) <= set(runner.graphs)
        for index, graph in enumerate(GRAPHS_CHECKED):
            inputs = _inputs(graph, index)
            outputs = runner.run(graph, {k: v.to(runner.device) for k, v in inputs.items()})
            with torch.no_grad():
                expected = GRAPHS[graph].compute(phase2, *inputs.values())
            assert list(outputs) == list(GRAPHS[graph].output_names)
            for name, e in zip(GRAPHS[graph].output_names, expected):
                got = outputs[name]
                assert got.device.type == runner.device.type and got.shape == e.shape
                assert (got.cpu() - e).abs().max() <= 1e-4 * max(1.0, float(e.abs().max())), (kind, graph, name)
        if kind != "eager":
            with pytest.raises(RunnerError, match="no graph 'analysis'"):
                runner.run("analysis", {"x": torch.zeros(1, 3, *SIZE)})
    assert not runner.is_active


def test_runner_list_and_device_rules(phase2, export):
    assert list(RUNNERS) == ["eager", "onnxruntime", "tensorrt"]
    with pytest.raises(RunnerError, match="unknown backend"):
        runner_class("tvm")
    with pytest.raises(RunnerError, match="cuda only"):
        runner_class("tensorrt").resolve_device("cpu")
    with pytest.raises(RunnerError, match="not a device"):
        runner_class("eager").resolve_device("gpu0")
    with pytest.raises(RunnerError, match="export folder"):
        open_runner("onnxruntime", model=phase2)
    with pytest.raises(RunnerError, match="PyTorch model"):
        open_runner("eager", export=export)
    if not torch.cuda.is_available():
        with pytest.raises(RunnerError, match="no CUDA device"):
            open_runner("eager", model=phase2, device="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback where no CUDA kernel can be built")
def test_gpu_wkv_without_a_buildable_kernel_says_so(caplog):
    """Where the kernel cannot be built, the GPU path keeps the vectorised op and says so once."""
    from hpcm.runtime.runners.eager import cuda_wkv_implementation

    with caplog.at_level("WARNING", logger="hpcm"):
        assert cuda_wkv_implementation() == "vectorised"
    assert "Bi-WKV CUDA kernel could not be built" in caplog.text and "needs a CUDA build" in caplog.text


@pytest.mark.skipif(not HAVE_ORT, reason="needs onnxruntime and onnxruntime-extensions")
def test_onnxruntime_rewrites_are_cached_verified_and_optional(export, tmp_path, monkeypatch):
    """The Python route's graph rewrite is made once per graph: a second session reads it from the cache
    (no onnx parse), a damaged entry is made again, and an unusable cache only costs the rewrite."""
    import onnx

    from hpcm.runtime.runners import onnxruntime as ort_runner

    graph = export.graph_path("step05")
    monkeypatch.setenv("HPCM_CACHE_DIR", str(tmp_path / "cache"))
    first = ort_runner.contrib_graph(graph)
    entry, = (tmp_path / "cache" / "onnxruntime").iterdir()
    assert first and onnx.load_model_from_string(first).graph.node  # a model with its graph, no weights
    parses = []
    monkeypatch.setattr(onnx, "load_model_from_string", lambda data: parses.append(data))
    assert ort_runner.contrib_graph(graph) == first and not parses
    entry.write_bytes(entry.read_bytes()[:-1] + b"x")  # damaged: its leading digest no longer fits
    monkeypatch.undo()
    monkeypatch.setenv("HPCM_CACHE_DIR", str(tmp_path / "cache"))
    assert ort_runner.contrib_graph(graph) == first and entry.read_bytes()[32:] == first
    monkeypatch.setenv("HPCM_CACHE_DIR", str(tmp_path / "not-a-folder"))
    (tmp_path / "not-a-folder").write_text("a file where the cache folder should be")
    assert ort_runner.contrib_graph(graph) == first
    assert ort_runner.contrib_graph(export.graph_path("synthesis")) is None  # no custom node: run as is
