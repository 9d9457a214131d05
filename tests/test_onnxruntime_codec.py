"""The codec end to end on ONNX Runtime (custom Bi-WKV node via onnxruntime-extensions) against eager."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_extensions")

from hpcm.export.onnx_export import GRAPH_KINDS, export_model  # noqa: E402
from hpcm.models import build_model  # noqa: E402
from hpcm.runtime.codec import BackendMismatchWarning, compress, decompress_with_state  # noqa: E402
from hpcm.runtime.errors import BitstreamError  # noqa: E402
from hpcm.runtime.export_loading import load_export_model  # noqa: E402
from hpcm.runtime.graph_model import GraphModel  # noqa: E402
from hpcm.runtime.mismatch import count_mismatches, stepping_backend  # noqa: E402
from hpcm.runtime.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402

KODAK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"
CODEC_GRAPHS = [g for g in GRAPH_KINDS if g != "forward"]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    model = build_model("phase2", seed=0)
    model.update()
    out = tmp_path_factory.mktemp("phase2_onnx")
    export_model(model, out, wkv="custom", sizes=(256, 256), graphs=CODEC_GRAPHS, optimize=False,
                 seed=0, trained=False, log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def models(export_dir):
    eager = load_export_model(export_dir)
    return eager, GraphModel(eager, OnnxRuntimeBackend(export_dir))


def _kodak_sized():
    """kodim01 (768x512) when the shared data is there, else a synthetic image of that size."""
    path = KODAK / "kodim01.png"
    if path.is_file():
        from PIL import Image

        arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
        return "kodim01", torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3, 33, 49, generator=g)
    return "synthetic", torch.nn.functional.interpolate(coarse, size=(512, 768), mode="bilinear").clamp(0, 1)


def test_export_weights_must_match(export_dir):
    other = build_model("phase2", seed=1)
    with pytest.raises(ValueError, match="other weights"):
        GraphModel(other, OnnxRuntimeBackend(export_dir))


def test_same_backend_round_trips_on_onnxruntime(models):
    eager, on_ort = models
    x = torch.rand(1, 3, 200, 300, generator=torch.Generator().manual_seed(2))
    data = compress(on_ort, x)
    decoded = decompress_with_state(on_ort, data)
    assert decoded.x_hat.shape == x.shape
    reference = decompress_with_state(eager, compress(eager, x))
    assert (decoded.x_hat - reference.x_hat).abs().max() < 1e-4


def test_cross_backend_on_kodak_sized_input(models):
    """Encode on one backend, decode on the other, at Kodak size. Graph outputs agree to ~1e-7 and
    the unguarded bucket indexes agree exactly here (measured: 0 of 491,520 for this unoptimised
    export; the onnxscript-optimised export flipped 1 on kodim01). The boundary guard makes the
    decode exact either way: every symbol is decoded as encoded, so y_hat differs from the encoder's
    only by the backends' ~1e-7 difference in the means added back."""
    eager, on_ort = models
    name, x = _kodak_sized()
    report = count_mismatches(eager, [(name, x)], {"eager": stepping_backend(eager), "ort": stepping_backend(on_ort)})
    totals = report["totals"]["ort"]
    assert (totals["symbols"], totals["mismatches"], totals["unguarded_mismatches"]) == (491_520, 0, 0)
    for encoder, decoder in ((eager, on_ort), (on_ort, eager)):
        from hpcm.runtime.codec import compress_with_state

        encoded = compress_with_state(encoder, x)
        with pytest.warns(BackendMismatchWarning):
            decoded = decompress_with_state(decoder, encoded.data)
        assert (decoded.y_hat - encoded.y_hat).abs().max() < 1e-5
        assert decoded.x_hat.shape == x.shape


def test_unguarded_stream_fails_loudly_when_a_bucket_flips(models):
    """Without the guard a single flipped bucket breaks the stream; the decoder must raise, never
    return a wrong image. A decoder whose scales are nudged across one boundary plays the other backend."""
    eager, _ = models
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    data = compress(eager, x, guard_epsilon=0.0)

    class Nudged:
        def __init__(self, model):
            self.model = model
            self.calls = 0

        def __getattr__(self, name):
            return getattr(self.model, name)

        def step_parameters(self, state, step):
            scales, means = self.model.step_parameters(state, step)
            if step == 6:
                table = self.model.scale_table
                bounds = table[:-1].to(scales.dtype)
                # move the scale nearest to a boundary just across it
                flat = scales.reshape(-1)
                rel = (flat[:, None] / bounds[None] - 1).abs()
                pos = int(rel.min(1).values.argmin())
                j = int(rel[pos].argmin())
                flat = flat.clone()
                flat[pos] = bounds[j] * (0.999999 if flat[pos] > bounds[j] else 1.000001)
                scales = flat.reshape(scales.shape)
            return scales, means

    with pytest.raises(BitstreamError):
        decompress_with_state(Nudged(eager), data)


def test_check_command_reports_and_exits(export_dir, tmp_path):
    from hpcm.cli import main

    report = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["check", str(export_dir), "--limit", "1", "--crop", "256",
                                       "--images", str(tmp_path / "none"), "--report", str(report),
                                       "--graph", "step05", "--graph", "transition_s1_s2"])
    assert "step05" in result.output and "scale-index mismatches" in result.output
    assert report.is_file()
    import json

    data = json.loads(report.read_text())
    assert set(data["graphs"]) == {"step05", "transition_s1_s2"}
    assert data["graphs"]["step05"][0]["outputs"]["scales"]["max"] < 1e-4
    assert result.exit_code == (0 if data["passed"] else 1)
    strict = CliRunner().invoke(main, ["check", str(export_dir), "--limit", "1", "--crop", "256",
                                       "--images", str(tmp_path / "none"), "--graph", "step05",
                                       "--max-abs-error", "0"])
    assert strict.exit_code != 0 and "step05" in strict.output


def test_encode_and_decode_commands_on_the_export(export_dir, tmp_path):
    """``hpcm encode/decode --export DIR``: the CLI codec on ONNX Runtime, decodable by eager PyTorch too."""
    from PIL import Image

    from hpcm.cli import main

    g = torch.Generator().manual_seed(7)
    pixels = (torch.rand(1, 3, 24, 40, generator=g) * 255).round().to(torch.uint8)
    pixels = torch.nn.functional.interpolate(pixels.float(), size=(192, 320), mode="bilinear").round().to(torch.uint8)
    Image.fromarray(pixels[0].permute(1, 2, 0).numpy()).save(tmp_path / "in.png")
    runner = CliRunner()
    encoded = runner.invoke(main, ["encode", str(tmp_path / "in.png"), "--export", str(export_dir),
                                   "-o", str(tmp_path / "in.hpcm")])
    assert encoded.exit_code == 0, encoded.output
    assert "onnxruntime" in encoded.output
    for extra, name in ((["--export", str(export_dir)], "graphs.png"), ([], "eager.png")):
        decoded = runner.invoke(main, ["decode", str(tmp_path / "in.hpcm"), "-o", str(tmp_path / name), *extra])
        assert decoded.exit_code == 0, decoded.output
    graphs = np.asarray(Image.open(tmp_path / "graphs.png"), dtype=np.int16)
    eager = np.asarray(Image.open(tmp_path / "eager.png"), dtype=np.int16)
    assert graphs.shape == (192, 320, 3) and np.abs(graphs - eager).max() <= 1  # float rounding at 8 bits only
    conflict = runner.invoke(main, ["encode", str(tmp_path / "in.png"), "--export", str(export_dir), "-v", "phase3",
                                    "-o", str(tmp_path / "x.hpcm")])
    assert conflict.exit_code != 0 and "exclude each other" in conflict.output
    missing = runner.invoke(main, ["decode", str(tmp_path / "in.hpcm"), "--export", str(tmp_path), "-o",
                                   str(tmp_path / "x.png")])
    assert missing.exit_code != 0 and "hpcm-export directory" in missing.output
