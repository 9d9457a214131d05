import importlib.util
from pathlib import Path

import pytest
from click.testing import CliRunner

from hpcm.runtime.tensorrt_backend import (
    PLUGIN_ENV, Profile, TensorRTError, engine_cache_key, engine_precision, find_plugin_library, import_tensorrt,
)

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


def test_cache_key_changes_with_every_field():
    profile = Profile((256, 256), (512, 768), (1024, 1024))
    base = dict(onnx_sha256="a", trt_version="10.16", gpu_name="H100", capability=(9, 0),
                plugin_sha256="p", profile=profile, precision="fp32")
    key = engine_cache_key(**base)
    assert key == engine_cache_key(**base)
    variations = [("onnx_sha256", "b"), ("trt_version", "11.1"), ("gpu_name", "H200"), ("capability", (8, 0)),
                  ("plugin_sha256", "q"), ("profile", Profile((256, 256), (512, 768), (2048, 2048))),
                  ("precision", "fp16"), ("weights_sha256", "w")]
    assert len({engine_cache_key(**{**base, k: v}) for k, v in variations} | {key}) == len(variations) + 1


def test_profile_shapes_follow_the_manifest_units():
    graph = {"sample_input_shapes": {"context_next": [1, 640, 8, 12], "y_hat": [1, 320, 8, 12]},
             "spatial_unit": {"context_next": 2, "y_hat": 2}}
    shapes = Profile((128, 128), (256, 384), (512, 512)).input_shapes(graph, alignment=128)
    assert shapes["context_next"] == ((1, 640, 2, 2), (1, 640, 4, 6), (1, 640, 8, 8))
    with pytest.raises(ValueError, match="multiples of 128"):
        Profile((100, 128), (128, 128), (128, 128)).check(128)
    with pytest.raises(ValueError, match="min <= opt <= max"):
        Profile((256, 256), (128, 128), (512, 512)).check(128)


def test_missing_plugin_library_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv(PLUGIN_ENV, str(tmp_path / "nope.so"))
    with pytest.raises(TensorRTError, match="cmake -S plugins -B build"):
        find_plugin_library(tmp_path / "missing.so")
    library = tmp_path / "libhpcm_biwkv_trt_plugin.so"
    library.write_bytes(b"\x7fELF")
    monkeypatch.setenv(PLUGIN_ENV, str(library))
    assert find_plugin_library() == library


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed; this checks the message where it is not")
def test_missing_tensorrt_gives_instructions():
    with pytest.raises(TensorRTError, match="NVIDIA's package index"):
        import_tensorrt()


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed; this checks the message where it is not")
def test_build_command_reports_missing_tensorrt_or_gpu(tmp_path):
    from hpcm.cli import main

    (tmp_path / "manifest.json").write_text('{"sample_size": [256, 256], "alignment": 128, "graphs": {}}')
    result = CliRunner().invoke(main, ["build", str(tmp_path)])
    assert result.exit_code != 0
    assert "GPU" in result.output or "TensorRT" in result.output


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAVE_TRT, reason="needs the TensorRT libraries (NVIDIA's package index) and a GPU")
def test_engine_matches_eager(tmp_path):
    import torch

    from hpcm.export.onnx_export import export_model
    from hpcm.models import build_model
    from hpcm.runtime.tensorrt_backend import TensorRTBackend

    model = build_model("phase2", seed=0).eval()
    export_model(model, tmp_path, sizes=(128, 128), graphs=["step05"], log=lambda s: None)
    backend = TensorRTBackend(tmp_path, cache_dir=tmp_path / "engines")
    context = torch.randn(1, 640, 8, 8)
    y_hat = torch.round(torch.randn(1, 320, 8, 8))
    out = backend.run("step05", {"context_next": context.cuda(), "y_hat": y_hat.cuda()})
    with torch.no_grad():
        scales, means, new_context = model.step_context(5, context, y_hat)
    torch.testing.assert_close(out["scales"].cpu(), scales, rtol=1e-4, atol=1e-4)


def test_engine_precision_follows_the_export():
    assert engine_precision("fp32", None) == "fp32"
    assert engine_precision("fp16", None) == "fp16"
    assert engine_precision("fp32", "fp16") == "fp16"  # TensorRT 10's FP16 flag on a float32 export
    with pytest.raises(ValueError, match="computes in float16"):
        engine_precision("fp16", "fp32")
    with pytest.raises(ValueError, match="must be one of"):
        engine_precision("fp32", "int8")
