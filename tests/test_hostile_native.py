"""Native-library cache problems: a corrupt or empty cached library, a cache that is a file or
cannot be written, a compiler that does not exist or fails. A damaged cache entry is rebuilt; where
nothing can be built the pure-Python rANS coder takes over with a notice that says why."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hpcm import native
from hpcm.codec import rans
from hpcm.codec.entropy import StreamDecoder, StreamEncoder
from hpcm.errors import NativeBuildError
from hpcm.models.cdf_tables import default_scale_table, quantized_cdf_tables

from .hostile import cli, write_image, write_variant


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("HPCM_CACHE_DIR", str(folder))
    monkeypatch.delenv("HPCM_PURE_PYTHON_RANS", raising=False)
    return folder


def _cached_library_name() -> str:
    """The file name the rANS library has in any cache (its sources' digest), found by building it
    in the default cache, where earlier tests usually left it."""
    return rans.library_path().name


def _codes_correctly() -> None:
    tables = rans.CdfTables(*quantized_cdf_tables(default_scale_table()))
    values = torch.arange(-50, 50, dtype=torch.float32)
    indexes = torch.arange(100) % 60
    encoder = StreamEncoder(tables)
    encoder.add(values, indexes=indexes)
    decoder = StreamDecoder(encoder.finish(), tables)
    assert torch.equal(decoder.decode(values.shape, indexes=indexes), values)
    decoder.finish()


@pytest.mark.parametrize("content", [b"", b"\x7fELF garbage that no loader accepts" * 10])
def test_damaged_cached_library_is_rebuilt(cache: Path, content: bytes) -> None:
    name = _cached_library_name()
    cache.mkdir()
    (cache / name).write_bytes(content)
    assert rans.native_library() is not None
    assert (cache / name).stat().st_size > 1000
    _codes_correctly()


@pytest.mark.parametrize("case", ["cache is a file", "cache unwritable", "compiler missing", "compiler fails"])
def test_unbuildable_library_falls_back_to_python_with_a_reason(cache: Path, case: str,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    expected = {"cache is a file": "HPCM_CACHE_DIR", "cache unwritable": "HPCM_CACHE_DIR",
                "compiler missing": "does not exist", "compiler fails": "failed"}[case]
    if case == "cache is a file":
        cache.write_text("a file where the cache folder should be")
    elif case == "cache unwritable":
        monkeypatch.setenv("HPCM_CACHE_DIR", "/proc/self/hpcm-cache")  # not writable even by root
    elif case == "compiler missing":
        monkeypatch.setenv("CXX", str(cache.parent / "no-such-g++"))
    else:
        monkeypatch.setenv("CXX", "false")
    with caplog.at_level("WARNING", logger="hpcm"):
        assert rans.native_library() is None
    assert "pure-Python" in caplog.text and expected in caplog.text, caplog.text
    assert "no C++ compiler found" not in caplog.text
    _codes_correctly()


def test_build_errors_are_one_line(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "false")
    with pytest.raises(NativeBuildError) as caught:
        native.build_shared_library("hpcm_rans", [rans.SOURCE])
    assert "\n" not in str(caught.value) and "false" in str(caught.value)
    monkeypatch.setenv("CXX", str(cache / "missing-compiler"))
    with pytest.raises(NativeBuildError, match="does not exist"):
        native.build_shared_library("hpcm_rans", [rans.SOURCE])


def test_encode_works_through_a_broken_cache(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache.write_text("not a folder")
    monkeypatch.setenv("CXX", "false")
    image = write_image(tmp_path / "a.png", 24, 32)
    result = cli("encode", image, "--variant", write_variant(tmp_path), "-o", tmp_path / "a.hpcm")
    assert result.exit_code == 0, result.output
    assert "notice:" in result.output and "pure-Python" in result.output
    assert (tmp_path / "a.hpcm").is_file()


def test_native_onnxruntime_op_falls_back_to_the_python_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("onnxruntime")
    from hpcm.runtime.runners.onnxruntime import wkv_op_route

    header = tmp_path / "include" / "onnxruntime_c_api.h"
    header.parent.mkdir()
    header.write_text("#error this header is not ONNX Runtime's\n")
    monkeypatch.setenv("ONNXRUNTIME_INCLUDE_DIR", str(header.parent))
    monkeypatch.setenv("HPCM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("HPCM_BIWKV_ORT_OP", raising=False)
    with caplog.at_level("WARNING", logger="hpcm"):
        assert wkv_op_route() == "python"
    assert "Python op" in caplog.text and "failed" in caplog.text, caplog.text
