"""``hpcm-export --precision fp16``: float16 compute behind float32 graph inputs/outputs, checked
against float32 eager PyTorch, and the codec running on such an export (ONNX Runtime CPU)."""

from __future__ import annotations

import json

import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_extensions")

from click.testing import CliRunner  # noqa: E402

from hpcm.cli.export_cmds import export_main  # noqa: E402
from hpcm.codec import Codec  # noqa: E402
from hpcm.errors import ExportError  # noqa: E402
from hpcm.export.artifact import ExportDir  # noqa: E402
from hpcm.export.onnx_export import export_model  # noqa: E402
from hpcm.models import build_model  # noqa: E402
from hpcm.plugins.biwkv.contract import CONTRACT  # noqa: E402
from hpcm.runtime.runners.eager import EagerRunner  # noqa: E402
from hpcm.runtime.runners.onnxruntime import OnnxRuntimeRunner  # noqa: E402

from .graph_parity import graph_outputs, relative_error  # noqa: E402

SIZE = (128, 128)
FLOAT = onnx.TensorProto.FLOAT
FLOAT16 = onnx.TensorProto.FLOAT16
# float16 keeps 11 significant bits (relative step 4.9e-4); a few roundings in a row stay below this.
FP16_RELATIVE = 5e-3
# The whole forward rounds z and every step's y - means in the graph. float16 moves the means of seeded
# phase2 by up to 4.4e-3 (of 0.71), and 70 of the 81,920 float32 y residuals of the 256x256 sample lie
# within 5e-3 of a .5 boundary: float16 rounds 2 of its 86,016 decisions otherwise
# (scripts/measure_fp16_forward.py). Each such symbol moves x_hat by a whole quantisation step (5e-2 of
# its range) and changes the context of later steps, whatever the precision; with float32's decisions
# x_hat is within 1.1e-3. So the forward's precision is judged with float32's decisions, and the
# decisions that differ by their share: 2.5e-4 (21 of 86,016) leaves ten times room over float16's own
# and fails when the priors' output is 1 % off (28 differ).
FP16_ROUNDING_SHARE = 2.5e-4
# On ONNX Runtime the forward's decisions cannot be given, so its outputs are judged by the share of values
# outside float16 tolerance, the footprint of the symbols it rounds otherwise (seeded phase2 on the 256x128
# pair below: 0.9 % of x_hat beyond 2e-3, 1e-4 of the y likelihoods beyond 1e-2; none on the 128x128 image;
# exported with the priors' output 1 % off: 13 % and 5.9 % of x_hat, 2.7e-3 and 7.3e-4 of the likelihoods).
X_HAT_TOLERANCE, X_HAT_SHARE = 2e-3, 0.05
LIKELIHOOD_TOLERANCE, LIKELIHOOD_SHARE = 1e-2, 5e-4


@pytest.fixture(scope="module")
def fp16_export(tmp_path_factory):
    """phase2's RWKV-cell step at s3 and the synthesis, through the command."""
    out = tmp_path_factory.mktemp("fp16")
    result = CliRunner().invoke(export_main, ["--variant", "phase2", "-o", str(out), "--precision", "fp16",
                                              "--opt-size", "128", "128", "--graph", "step06",
                                              "--graph", "synthesis"])
    assert result.exit_code == 0, result.output
    assert "fp16 vs float32 eager" in result.output
    return out


def _types(model) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {v.name: v.type.tensor_type.elem_type for v in values}


def test_fp16_graph_types(fp16_export):
    model = onnx.load(str(fp16_export / "step06.onnx"))
    assert all(v.type.tensor_type.elem_type == FLOAT for v in [*model.graph.input, *model.graph.output])
    weights = [t for t in model.graph.initializer if len(t.dims) == 4]  # convolution kernels
    assert weights and all(t.data_type == FLOAT16 for t in weights)
    types = _types(model)
    (node,) = [n for n in model.graph.node if n.op_type == CONTRACT.op_type]
    assert [types[name] for name in node.input] == [FLOAT, FLOAT, FLOAT16, FLOAT16]  # w, u, k, v


def test_fp16_manifest_records_precision_and_error(fp16_export):
    manifest = json.loads((fp16_export / "manifest.json").read_text())
    assert manifest["precision"] == "fp16" and manifest["io_dtype"] == "float32"
    for graph in ("step06", "synthesis"):
        errors = manifest["graphs"][graph]["error_vs_float32"]
        assert errors and all(0 < e["relative"] < FP16_RELATIVE for e in errors.values()), errors


@pytest.mark.parametrize("size", [SIZE, (128, 256)])
def test_fp16_graphs_on_onnxruntime_match_float32_eager(fp16_export, phase2, size):
    """Close to float32 eager, but not equal: the graphs really compute in float16."""
    with OnnxRuntimeRunner(ExportDir.open(fp16_export)) as runner:
        for graph, name, got, expected in graph_outputs(runner, phase2, size, ["step06", "synthesis"], seed=4):
            error = relative_error(got, expected)
            assert 1e-6 < error < FP16_RELATIVE, (graph, name, error)


def test_fp16_overflow_is_refused(tmp_path):
    model = build_model("phase2", seed=0).eval()
    model.update()
    with torch.no_grad():
        next(model.h_s.parameters()).mul_(1e6)  # activations far beyond float16's 65504
    with pytest.raises(ExportError, match="not finite"):
        export_model(model, tmp_path, precision="fp16", size=SIZE, graphs=["hyper_synthesis"])


def test_fp16_codec_round_trips_on_its_own_backend(tmp_path):
    """Every codec graph in fp16 on ONNX Runtime: its own streams decode; ``hpcm check`` reports the
    cross-backend routes without judging them."""
    from hpcm.runtime.check import Tolerances, check_export

    model = build_model("phase2", seed=0).eval()
    model.update()
    export_model(model, tmp_path, precision="fp16", size=SIZE, seed=0)
    export = ExportDir.open(tmp_path)
    image = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(5))
    with OnnxRuntimeRunner(export) as runner, EagerRunner(model) as eager:
        report = check_export(Codec(eager, export.codec_parameters), Codec(runner, export.codec_parameters),
                              [("random", image)], Tolerances(max_abs_error=5e-2), precision="fp16")
    assert report["precision"] == "fp16" and not report["cross_backend_decodes_judged"]
    assert report["codec"][0]["backend_to_backend"]["ok"], report["codec"][0]
    assert report["passed"], report["failures"]


def _share_beyond(got: torch.Tensor, expected: torch.Tensor, tolerance: float) -> float:
    return float(((got - expected).abs() > tolerance).float().mean())


@pytest.mark.slow
def test_fp16_forward_matches_float32_eager(tmp_path, phase2):
    """The whole forward in fp16 (its likelihoods stay float32) against float32 eager: its precision
    with float32's rounding decisions, the share of decisions it takes otherwise (FP16_ROUNDING_SHARE
    says why these are apart), and the graph on ONNX Runtime.

    7 to 13 minutes on 2 cores; HPCM_SKIP_SLOW_EXPORT=1 skips it."""
    import os

    if os.environ.get("HPCM_SKIP_SLOW_EXPORT") == "1":
        pytest.skip("HPCM_SKIP_SLOW_EXPORT=1: the forward export takes about 7 min on 2 cores")
    manifest = json.loads(export_model(phase2, tmp_path, precision="fp16", size=(256, 256),
                                       graphs=["forward"]).read_text())
    record = manifest["graphs"]["forward"]
    assert all(e["relative"] < FP16_RELATIVE for e in record["error_vs_float32"].values()), record
    rounding = record["rounding_vs_float32"]
    assert rounding["decisions"] == 320 * 16 * 16 + 256 * 4 * 4, rounding
    assert rounding["differing"] <= FP16_ROUNDING_SHARE * rounding["decisions"], rounding
    runner = OnnxRuntimeRunner(ExportDir.open(tmp_path)).activate()
    for size, batch in ((SIZE, 1), ((256, 128), 2)):
        x = torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(6))
        with torch.no_grad():
            expected = phase2(x, training=False)
        got = runner.run("forward", {"x": x})
        shares = {"x_hat": _share_beyond(got["x_hat"], expected["x_hat"], X_HAT_TOLERANCE)}
        for name in ("y", "z"):
            likelihoods = got[f"{name}_likelihoods"]
            assert likelihoods.dtype == torch.float32
            shares[name] = _share_beyond(likelihoods, expected["likelihoods"][name], LIKELIHOOD_TOLERANCE)
        assert shares["x_hat"] <= X_HAT_SHARE and max(shares["y"], shares["z"]) <= LIKELIHOOD_SHARE, (size, shares)
