"""What computes a codec is decided in one place (``runtime/session.py``): which model, which tables,
which runner, and what the codec says about itself; ``hpcm decode`` reads each header once."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from hpcm.cli import main
from hpcm.codec import Codec, bitstream
from hpcm.errors import BitstreamError, ConfigError, EntropyTableError, ImageError, RunnerError
from hpcm.log import LOG
from hpcm.models import build_model
from hpcm.models.cdf_tables import TABLE_NAMES
from hpcm.models.checkpoint import save_checkpoint
from hpcm.runtime.session import CodecRequest, open_codec, resolve, untrained

TINY = "phase2+M=32+N=32"


class Notices(logging.Handler):
    """The warnings the package logs while it is attached."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture()
def notices():
    handler = Notices()
    LOG.addHandler(handler)
    level = LOG.level
    LOG.setLevel(logging.INFO)
    yield handler.messages
    LOG.removeHandler(handler)
    LOG.setLevel(level)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(build_model(TINY, seed=3), tmp_path_factory.mktemp("weights") / "tiny.pth")


@pytest.fixture(scope="module")
def tableless_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A raw state_dict with empty entropy-table buffers, as official and fork checkpoints are saved."""
    model = build_model("phase2", seed=4)
    path = tmp_path_factory.mktemp("raw") / "raw.pth"
    torch.save({k: (torch.empty(0) if k in TABLE_NAMES else v) for k, v in model.state_dict().items()}, path)
    return path


def test_seeded_model_is_announced_and_says_so(notices: list[str]) -> None:
    request = CodecRequest(variant=TINY)
    with open_codec(request) as session:
        assert isinstance(session.codec, Codec) and session.codec.variant == TINY
        provenance = session.provenance
    assert not provenance.trained and provenance.seed == 0 and provenance.variant == TINY
    assert provenance.tables == "computed from the seeded weights"
    assert provenance == untrained(request)  # known without building the model
    assert len(notices) == 1 and "UNTRAINED" in notices[0] and "meaningless rate-distortion" in notices[0]
    quiet = resolve(request, need_model=True, tables=False, announce=False)
    assert len(notices) == 1 and quiet.parameters is None and not quiet.model.has_entropy_tables


def test_checkpoint_tables_stored_or_computed_with_a_notice(tiny_checkpoint: Path, tableless_checkpoint: Path,
                                                            notices: list[str]) -> None:
    stored = resolve(CodecRequest(checkpoint=tiny_checkpoint), need_model=True)
    assert stored.provenance.trained and stored.provenance.tables == f"stored in {tiny_checkpoint}"
    assert stored.parameters.tables.source == str(tiny_checkpoint) and notices == []
    computed = resolve(CodecRequest(checkpoint=tableless_checkpoint, variant="phase2"), need_model=True)
    assert computed.provenance.tables == f"computed from the weights of {tableless_checkpoint}"
    assert computed.model.has_entropy_tables
    assert any("has no entropy tables; computing them" in n for n in notices)
    assert untrained(CodecRequest(checkpoint=tiny_checkpoint)) is None


def test_a_model_object_is_used_as_it_is() -> None:
    with pytest.raises(EntropyTableError, match="update"):
        resolve(CodecRequest(model=build_model(TINY, seed=0)), need_model=True)


def test_conflicting_requests_are_refused_before_loading(tmp_path: Path) -> None:
    with pytest.raises(RunnerError, match="give --export DIR"):
        open_codec(CodecRequest(variant="no such variant", backend="onnxruntime"))
    header = bitstream.Header("my.json", bytes(8), bytes(8), bytes(8), 64, 64, 0, 0)
    with pytest.raises(BitstreamError, match="pass the checkpoint that encoded it"):
        open_codec(CodecRequest(header=header))
    huge = bitstream.Header("no such variant", bytes(8), bytes(8), bytes(8), 60000, 60000, 0, 0)
    with pytest.raises(ImageError, match="above the limit"):  # before the header's variant is even looked up
        open_codec(CodecRequest(header=huge))
    assert CodecRequest(export=tmp_path).backend_name == "onnxruntime" and CodecRequest().backend_name == "eager"


def test_an_export_excludes_a_variant_and_a_checkpoint_it_does_not_run(tmp_path: Path) -> None:
    # refused before the folder is opened: an empty folder would fail to open
    with pytest.raises(ConfigError, match="--variant and --export exclude each other"):
        resolve(CodecRequest(export=tmp_path, variant="phase2"), need_model=False)
    with pytest.raises(ConfigError, match="--checkpoint and --export exclude each other"):
        resolve(CodecRequest(export=tmp_path, checkpoint=tmp_path / "x.pth"), need_model=False)


def test_decode_parses_and_checks_each_header_once(tiny_checkpoint: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    image = tmp_path / "in.png"
    pixels = (torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    Image.fromarray(pixels[0].permute(1, 2, 0).numpy()).save(image)
    stream = tmp_path / "in.hpcm"
    encoded = CliRunner().invoke(main, ["encode", str(image), "-c", str(tiny_checkpoint), "-o", str(stream)])
    assert encoded.exit_code == 0, encoded.output
    calls = {"parse_header": 0, "check_header": 0}
    parse_header, check_header = bitstream.parse_header, Codec.check_header

    def counted_parse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["parse_header"] += 1
        return parse_header(*args, **kwargs)

    def counted_check(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls["check_header"] += 1
        return check_header(self, *args, **kwargs)

    monkeypatch.setattr(bitstream, "parse_header", counted_parse)
    monkeypatch.setattr(Codec, "check_header", counted_check)
    decoded = CliRunner().invoke(main, ["decode", str(stream), "-c", str(tiny_checkpoint), "-o", str(tmp_path / "o.png"),
                                        "--reference", str(image)])
    assert decoded.exit_code == 0, decoded.output
    assert calls == {"parse_header": 1, "check_header": 1}
