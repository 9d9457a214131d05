import importlib.util

import pytest
from click.testing import CliRunner

from hpcm.errors import ArtifactError, RunnerError
from hpcm.export.artifact import Profile
from hpcm.plugins.biwkv.trt import find_plugin_library
from hpcm.runtime.runners.tensorrt import engine_cache_key, engine_precision, import_tensorrt

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


def test_profile_shapes_follow_the_graph_strides():
    """step01 works at s1 (stride 64): a 128x128 image gives 2x2 maps."""
    shapes = Profile((128, 128), (256, 384), (512, 512)).input_shapes("step01", {"context_next": 640, "y_hat": 320})
    assert shapes["context_next"] == ((1, 640, 2, 2), (1, 640, 4, 6), (1, 640, 8, 8))
    assert shapes["y_hat"][2] == (1, 320, 8, 8)
    with pytest.raises(ArtifactError, match="multiples of 128"):
        Profile((100, 128), (128, 128), (128, 128)).validate(128)
    with pytest.raises(ArtifactError, match="min <= opt <= max"):
        Profile((256, 256), (128, 128), (512, 512)).validate(128)


def test_missing_plugin_library_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCM_BIWKV_PLUGIN", str(tmp_path / "nope.so"))
    with pytest.raises(RunnerError, match="cmake -S plugins -B build"):
        find_plugin_library(tmp_path / "missing.so")
    library = tmp_path / "libhpcm_biwkv_trt_plugin.so"
    library.write_bytes(b"\x7fELF")
    monkeypatch.setenv("HPCM_BIWKV_PLUGIN", str(library))
    assert find_plugin_library() == library


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed; this checks the message where it is not")
def test_missing_tensorrt_gives_instructions():
    with pytest.raises(RunnerError, match="NVIDIA's package index"):
        import_tensorrt()


def test_build_command_refuses_a_folder_without_manifest(tmp_path):
    from hpcm.cli import main

    result = CliRunner().invoke(main, ["build", str(tmp_path)])
    assert result.exit_code == 1 and "manifest.json does not exist" in result.output
    assert "Traceback" not in result.output


def test_engine_precision_follows_the_export():
    assert engine_precision("fp32", None) == "fp32"
    assert engine_precision("fp16", None) == "fp16"
    assert engine_precision("fp32", "fp16") == "fp16"  # TensorRT 10's FP16 flag on a float32 export
    with pytest.raises(RunnerError, match="computes in float16"):
        engine_precision("fp16", "fp32")
    with pytest.raises(RunnerError, match="must be one of"):
        engine_precision("fp32", "int8")
