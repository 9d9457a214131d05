"""The codec end to end on ONNX Runtime (custom Bi-WKV node via onnxruntime-extensions) against eager."""

import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_extensions")

from hpcm.cli import main  # noqa: E402
from hpcm.codec import BackendMismatchWarning, Codec  # noqa: E402
from hpcm.config import default_image_folder  # noqa: E402
from hpcm.errors import ArtifactError, BitstreamError  # noqa: E402
from hpcm.export.artifact import ExportDir  # noqa: E402
from hpcm.export.onnx_export import export_model  # noqa: E402
from hpcm.models import build_model  # noqa: E402
from hpcm.models.checkpoint import save_checkpoint  # noqa: E402
from hpcm.runtime.mismatch import count_mismatches  # noqa: E402
from hpcm.runtime.runners.eager import EagerRunner  # noqa: E402
from hpcm.runtime.runners.onnxruntime import OnnxRuntimeRunner  # noqa: E402
from hpcm.runtime.session import CodecRequest, eager_codec, resolve  # noqa: E402

KODAK = default_image_folder()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = build_model("phase2", seed=0)
    model.update()
    return save_checkpoint(model, tmp_path_factory.mktemp("weights") / "phase2.pth")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, checkpoint):
    """The default export (the codec's graphs) of a checkpoint, through hpcm-export."""
    out = tmp_path_factory.mktemp("exports") / "phase2"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(checkpoint), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def codecs(export_dir):
    """(eager codec on the export's weights, codec on the export's graphs on ONNX Runtime)."""
    export = ExportDir.open(export_dir)
    model = build_model("phase2", seed=0).eval()
    parameters = resolve(CodecRequest(model=model, export=export), need_model=True).parameters
    return Codec(EagerRunner(model).activate(), parameters), Codec(OnnxRuntimeRunner(export).activate(), parameters)


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
    with pytest.raises(ArtifactError, match="other weights"):
        resolve(CodecRequest(model=build_model("phase2", seed=1), export=export_dir), need_model=True)


def test_the_export_folder_alone_is_the_codec(export_dir, checkpoint, tmp_path):
    """Copied elsewhere, without the checkpoint, the folder encodes and decodes on ONNX Runtime, and
    eager PyTorch on the same weights decodes its stream."""
    moved = tmp_path / "elsewhere" / "phase2"
    shutil.copytree(export_dir, moved)
    weights = tmp_path / "phase2.pth"
    shutil.move(checkpoint, weights)  # the checkpoint is gone for the duration of the test
    try:
        export = ExportDir.open(moved)
        x = torch.rand(1, 3, 200, 300, generator=torch.Generator().manual_seed(2))
        with OnnxRuntimeRunner(export) as runner:
            on_ort = Codec(runner, export.codec_parameters)
            data = on_ort.compress(x).data
            decoded = on_ort.decompress(data)
        assert decoded.x_hat.shape == x.shape
    finally:
        shutil.move(weights, checkpoint)
    model = build_model("phase2", seed=0).eval()
    model.update()
    with pytest.warns(BackendMismatchWarning):
        on_eager = eager_codec(model).decompress(data)
    assert (on_eager.x_hat - decoded.x_hat).abs().max() < 1e-4


def test_export_folder_is_written_transactionally(export_dir, tmp_path):
    """A failed export leaves neither a folder nor a partial one, and never touches an existing export."""
    target = tmp_path / "export"
    shutil.copytree(export_dir, target)
    before = sorted(p.name for p in target.iterdir())
    model = build_model("phase2", seed=0).eval()  # no entropy tables: the export refuses it
    with pytest.raises(Exception, match="update"):
        export_model(model, target, graphs=["synthesis"])
    assert sorted(p.name for p in target.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_cross_backend_on_kodak_sized_input(codecs):
    """Encode on one backend, decode on the other, at Kodak size. Graph outputs agree to ~1e-7, so
    raw bucket indexes may flip only for scales within that distance of a boundary: how many do is a
    matter of the CPU's last bits (0 of 491,520 on one machine, 1 on CI's), and every one of them must
    fall inside the guard band. The guard makes the decode exact either way: every symbol is decoded
    as encoded, so y_hat differs from the encoder's only by the backends' ~1e-7 difference in the
    means added back."""
    eager, on_ort = codecs
    name, x = _kodak_sized()
    report = count_mismatches({"eager": eager, "ort": on_ort}, [(name, x)])
    totals = report["totals"]["ort"]
    assert totals["symbols"] == 491_520
    assert totals["mismatches"] <= 10, totals  # 2e-5 of the symbols: more means the graphs disagree
    assert totals["unguarded_mismatches"] == 0, totals
    for encoder, decoder in ((eager, on_ort), (on_ort, eager)):
        encoded = encoder.compress(x)
        with pytest.warns(BackendMismatchWarning):
            decoded = decoder.decompress(encoded.data)
        assert (decoded.y_hat - encoded.y_hat).abs().max() < 1e-5
        assert decoded.x_hat.shape == x.shape


def test_unguarded_stream_fails_loudly_when_a_bucket_flips(codecs):
    """Without the guard a single flipped bucket breaks the stream; the decoder must raise, never
    return a wrong image. A runner whose scales are nudged across one boundary plays the other backend."""
    eager, _ = codecs
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    data = eager.compress(x, guard_epsilon=0.0).data
    bounds = eager.parameters.tables.scale_table[:-1]

    class Nudged:
        """Of the scales step 6 codes, the one nearest to a bucket boundary moved just across it."""

        def __init__(self, runner):
            self.runner, self.device, self.fingerprint = runner, runner.device, runner.fingerprint

        def run(self, graph, inputs):
            outputs = dict(self.runner.run(graph, inputs))
            if graph == "step06":
                flat = outputs["scales"].reshape(-1).clone()
                coded = eager.schedule.step_mask(6).full(outputs["scales"]).reshape(-1) > 0
                rel = (flat[:, None] / bounds[None] - 1).abs()
                rel[~coded] = float("inf")
                pos = int(rel.min(1).values.argmin())
                j = int(rel[pos].argmin())
                flat[pos] = bounds[j] * (0.999999 if flat[pos] > bounds[j] else 1.000001)
                outputs["scales"] = flat.reshape(outputs["scales"].shape)
            return outputs

    with pytest.raises(BitstreamError):
        Codec(Nudged(eager.runner), eager.parameters).decompress(data)


def test_check_command_reports_and_exits(export_dir, checkpoint, tmp_path):
    report = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["check", str(export_dir), "-c", str(checkpoint), "--limit", "1", "--crop", "256",
                                       "--images", str(tmp_path / "none"), "--report", str(report),
                                       "--graph", "step05", "--graph", "context_fusion_s2"])
    assert "step05" in result.output and "scale-index mismatches" in result.output
    assert report.is_file()
    import json

    data = json.loads(report.read_text())
    assert set(data["graphs"]) == {"step05", "context_fusion_s2"}
    assert data["graphs"]["step05"][0]["outputs"]["scales"]["max"] < 1e-4
    assert data["passed"] and result.exit_code == 0, result.output
    strict = CliRunner().invoke(main, ["check", str(export_dir), "-c", str(checkpoint), "--limit", "1", "--crop", "256",
                                       "--images", str(tmp_path / "none"), "--graph", "step05",
                                       "--max-abs-error", "0"])
    assert strict.exit_code != 0 and "step05" in strict.output
    trained = CliRunner().invoke(main, ["check", str(export_dir), "--limit", "1"])
    assert trained.exit_code != 0 and "--checkpoint" in trained.output  # no reference weights to compare with


def test_encode_and_decode_commands_on_the_export(export_dir, checkpoint, tmp_path):
    """``hpcm encode/decode --export DIR``: the CLI codec on ONNX Runtime, decodable by eager PyTorch too."""
    from PIL import Image

    g = torch.Generator().manual_seed(7)
    pixels = (torch.rand(1, 3, 24, 40, generator=g) * 255).round().to(torch.uint8)
    pixels = torch.nn.functional.interpolate(pixels.float(), size=(192, 320), mode="bilinear").round().to(torch.uint8)
    Image.fromarray(pixels[0].permute(1, 2, 0).numpy()).save(tmp_path / "in.png")
    runner = CliRunner()
    encoded = runner.invoke(main, ["encode", str(tmp_path / "in.png"), "--export", str(export_dir),
                                   "-o", str(tmp_path / "in.hpcm")])
    assert encoded.exit_code == 0, encoded.output
    assert "onnxruntime" in encoded.output
    for extra, name in ((["--export", str(export_dir)], "graphs.png"), (["-c", str(checkpoint)], "eager.png")):
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
    assert missing.exit_code != 0 and "hpcm-export folder" in missing.output
