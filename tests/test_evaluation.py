"""hpcm eval / plot without a learned model: metrics against hand-computed values, BD deltas against
their definition and the bjontegaard package, the result files, resuming, classical codecs."""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from hpcm import config
from hpcm.cli import main
from hpcm.codec.images import psnr_rgb8
from hpcm.errors import OutputError
from hpcm.evaluation.bd import anchor_curves, bd_quality, bd_rate, bd_table, markdown_table, read_curve
from hpcm.evaluation.classical import CLASSICAL_CODECS, ClassicalCodec, CodecUnavailableError
from hpcm.evaluation.metrics import ms_ssim_rgb8
from hpcm.evaluation.results import RESULT_METRICS, ROW_FIELDS, RowJournal

ANCHORS = config.default_anchor_folder()


def constant(level: int, side: int) -> torch.Tensor:
    return torch.full((1, 3, side, side), level / 255.0)


def run(*args: object):  # noqa: ANN201
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def compressai_reader(path: Path, metric: str) -> dict:
    """What compressai.utils.plot reads of a result file (name, bpp and one metric)."""
    data = json.loads(path.read_text())
    results = data["results"] if "results" in data else data
    if metric not in results:
        raise ValueError(f"metric {metric} not in {path}")
    return {"name": data.get("name", path.stem), "xs": results["bpp"], "ys": results[metric]}


# ---------------------------------------------------------------------- metrics
def test_psnr_on_8bit_values() -> None:
    assert psnr_rgb8(constant(100, 8), constant(110, 8)) == pytest.approx(10 * math.log10(255**2 / 100))
    # values are rounded to 8 bits first: a sub-level difference is no difference
    assert psnr_rgb8(constant(100, 8), constant(100, 8) + 0.4 / 255) == math.inf
    x = constant(50, 4)
    x_hat = x.clone()
    x_hat[0, 1, 0, 0] = 60 / 255  # one sample of 48 off by 10 levels
    assert psnr_rgb8(x, x_hat) == pytest.approx(10 * math.log10(255**2 / (100 / 48)))


def test_ms_ssim_of_constant_images() -> None:
    # Constant images have no structure (contrast-structure terms are 1), so MS-SSIM reduces to the
    # coarsest scale's luminance term to the power of its weight 0.1333 (Wang et al. 2003).
    # In float32 (as CompressAI computes it) the variances E[x^2] - E[x]^2 of 8-bit levels lose some
    # 1e-3 to cancellation, which moves the value by 3.4e-5 here: within the 4 decimals hpcm eval prints.
    c1 = (0.01 * 255) ** 2
    luminance = (2 * 100 * 110 + c1) / (100**2 + 110**2 + c1)
    assert ms_ssim_rgb8(constant(100, 192), constant(110, 192)) == pytest.approx(luminance**0.1333, abs=5e-5)
    assert ms_ssim_rgb8(constant(100, 192), constant(100, 192)) == pytest.approx(1.0, abs=5e-5)
    assert ms_ssim_rgb8(constant(100, 128), constant(110, 128)) is None  # too small for 5 scales


def test_ms_ssim_in_float32_is_float64_to_the_printed_decimals() -> None:
    """pytorch-msssim in float64 (the same formula, without float32's cancellation) is the reference:
    JPEG-coded textured images at low and high quality agree to half the 4th decimal."""
    from pytorch_msssim import ms_ssim

    codec = CLASSICAL_CODECS["jpeg"]
    rng = np.random.default_rng(0)
    for seed, quality in enumerate((10, 50, 95)):
        coarse = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
        texture = rng.integers(0, 24, (240, 288, 3))
        pixels = np.clip(np.asarray(Image.fromarray(coarse).resize((288, 240), Image.BICUBIC), dtype=np.int64)
                         + texture, 0, 255).astype(np.uint8)
        decoded = codec.decode(codec.encode(pixels, quality))
        x, x_hat = (torch.from_numpy(np.array(p)).permute(2, 0, 1)[None] for p in (pixels, decoded))
        float64 = float(ms_ssim(x.double(), x_hat.double(), data_range=255.0))
        assert ms_ssim_rgb8(x / 255.0, x_hat / 255.0) == pytest.approx(float64, abs=5e-5)


# ---------------------------------------------------------------------- BD
CURVE = ([0.1, 0.25, 0.5, 0.9, 1.5], [28.0, 31.0, 34.0, 37.0, 40.0])


def test_bd_of_a_curve_against_itself_and_scaled_rates() -> None:
    assert bd_rate(CURVE, CURVE).value == pytest.approx(0.0, abs=1e-9)
    assert bd_quality(CURVE, CURVE).value == pytest.approx(0.0, abs=1e-9)
    cheaper = ([0.9 * r for r in CURVE[0]], CURVE[1])
    assert bd_rate(CURVE, cheaper).value == pytest.approx(-10.0, abs=1e-9)
    better = (CURVE[0], [q + 0.5 for q in CURVE[1]])
    assert bd_quality(CURVE, better).value == pytest.approx(0.5, abs=1e-9)


def test_bd_cleans_curves_and_reports_missing_overlap() -> None:
    shuffled = ([0.5, 0.1, 0.9, 0.25, 1.5, 0.6], [34.0, 28.0, 37.0, 31.0, 40.0, 33.0])  # 0.6 bpp lowers PSNR
    assert bd_rate(CURVE, shuffled).value == pytest.approx(0.0, abs=1e-9)
    far = ([r * 100 for r in CURVE[0]], [q + 30 for q in CURVE[1]])
    assert bd_rate(CURVE, far).value is None and "overlap" in bd_rate(CURVE, far).note


def pchip_bd_rate(ref: tuple, test: tuple) -> float:
    """BD-rate from its definition: mean log10-rate difference of PCHIP fits over the common PSNR range."""
    from scipy.interpolate import PchipInterpolator

    (r1, q1), (r2, q2) = ref, test
    lo, hi = max(min(q1), min(q2)), min(max(q1), max(q2))
    f1 = PchipInterpolator(q1, np.log10(r1)).integrate(lo, hi)
    f2 = PchipInterpolator(q2, np.log10(r2)).integrate(lo, hi)
    return (10 ** ((f2 - f1) / (hi - lo)) - 1) * 100


@pytest.mark.skipif(not ANCHORS.is_dir(), reason=f"shared anchors not found at {ANCHORS}")
def test_bd_rate_on_shared_anchors_agrees_with_the_reference_implementation() -> None:
    import bjontegaard

    anchors = anchor_curves(ANCHORS)
    vtm, webp = anchors["vtm"], anchors["webp"]
    ours = bd_table([webp], vtm)[0].rate_psnr.value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns that the curves overlap on 66 % of their range
        reference = bjontegaard.bd_rate(vtm.bpp, vtm.psnr, webp.bpp, webp.psnr, "pchip",
                                        require_matching_points=False)
    assert ours == pytest.approx(reference, abs=1e-6)
    assert ours == pytest.approx(pchip_bd_rate((vtm.bpp, vtm.psnr), (webp.bpp, webp.psnr)), abs=1e-6)
    assert 30 < ours < 150  # WebP needs far more bits than VTM
    table = markdown_table(bd_table([webp], vtm), vtm)
    assert "BD-rate PSNR vs VTM" in table and "vtm.json" in table


# ---------------------------------------------------------------------- result files
def _row(point: str, image: str = "a.png", sha256: str = "0" * 64) -> dict:
    """A journal row as ``measure_image`` writes it."""
    numbers = {name: 1.0 for name in ROW_FIELDS if name not in ("point", "image", "image_sha256")}
    return {**numbers, "point": point, "image": image, "image_sha256": sha256}


def test_journal_resumes_after_a_torn_line_and_refuses_another_setup(tmp_path: Path) -> None:
    path = tmp_path / "r.rows.jsonl"
    journal = RowJournal(path, {"codec": "jpeg"})
    journal.append(_row("q10"))
    with path.open("a") as f:
        f.write('{"point": "q10", "ima')  # killed mid-write
    again = RowJournal(path, {"codec": "jpeg"})
    assert again.done() == {("q10", "0" * 64, "a.png")}
    again.append(_row("q20"))
    again.append(_row("q20", sha256="1" * 64))  # another image of the same name
    again.append(_row("q20"))  # measured twice (two runs): counted once
    assert RowJournal(path, {"codec": "jpeg"}).done() == {("q10", "0" * 64, "a.png"), ("q20", "0" * 64, "a.png"),
                                                          ("q20", "1" * 64, "a.png")}
    with pytest.raises(OutputError, match="another -o"):
        RowJournal(path, {"codec": "webp"})


@pytest.fixture()
def small_images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        coarse = rng.integers(0, 256, (12, 13, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((208, 192), Image.BICUBIC).save(folder / f"img{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def test_classical_eval_writes_compressai_json_and_resumes(small_images: Path, tmp_path: Path) -> None:
    out = tmp_path / "jpeg.json"
    first = run("eval", small_images, "--codec", "jpeg", "--quality", "30,80", "-o", out, "--no-progress")
    assert first.exit_code == 0, first.output
    assert "skipping" in first.output and "broken.png" in first.output  # one line, no traceback
    for metric in RESULT_METRICS:
        curve = compressai_reader(out, metric)
        assert curve["name"].startswith("JPEG") and len(curve["xs"]) == len(curve["ys"]) == 2
    results = json.loads(out.read_text())["results"]
    assert results["bpp"][0] < results["bpp"][1] and results["psnr-rgb"][0] < results["psnr-rgb"][1]
    # the rows behind the means: bpp is the file's bytes over the original H*W
    with (tmp_path / "jpeg.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["image"] for r in rows} == {"img0.png", "img1.png"}
    assert all(float(r["bpp"]) == pytest.approx(8 * int(r["bytes"]) / (208 * 192)) for r in rows)
    assert np.mean([float(r["psnr_rgb"]) for r in rows if r["point"] == "jpeg-q30"]) == pytest.approx(
        results["psnr-rgb"][0])
    # a rerun with one more quality measures only the new point
    second = run("eval", small_images, "--codec", "jpeg", "--quality", "30,80,95", "-o", out, "--no-progress")
    assert second.exit_code == 0, second.output
    assert "already holds 4 of the rows; measuring the other 5" in second.output  # 2 images + broken.png x 3
    journal = [json.loads(line) for line in (tmp_path / "jpeg.rows.jsonl").read_text().splitlines()[1:]]
    assert len(journal) == 6 and len({(r["point"], r["image"]) for r in journal}) == 6
    assert len(read_curve(out).bpp) == 3


@pytest.mark.parametrize("name", sorted(CLASSICAL_CODECS))
def test_every_classical_codec_codes_or_says_what_to_install(name: str) -> None:
    codec = CLASSICAL_CODECS[name]
    try:
        codec.check_available()
    except CodecUnavailableError as exc:
        assert (codec.package or codec.feature) in str(exc)
        pytest.skip(str(exc))
    image = np.asarray(Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8))
                       .resize((64, 48)))
    low, high = codec.encode(image, codec.qualities[0]), codec.encode(image, codec.qualities[-1])
    assert len(low) < len(high)
    assert codec.decode(high).shape == (48, 64, 3)


def test_a_missing_codec_package_is_a_message() -> None:
    def fail() -> None:
        raise ImportError("No module named 'not_installed'")

    missing = ClassicalCodec("x", "X", "X", (50,), package="not-installed-plugin", register=fail)
    with pytest.raises(CodecUnavailableError, match="pip install not-installed-plugin"):
        missing.check_available()


# ---------------------------------------------------------------------- plot
def write_curve(path: Path, name: str, bpp: list, psnr: list) -> Path:
    path.write_text(json.dumps({"name": name, "description": "", "results": {"bpp": bpp, "psnr-rgb": psnr}}))
    return path


def test_plot_writes_figure_and_a_table_naming_the_reference(tmp_path: Path) -> None:
    mine = write_curve(tmp_path / "mine.json", "mine", *CURVE)
    ref = write_curve(tmp_path / "ref.json", "ref", [0.9 * r for r in CURVE[0]], CURVE[1])
    anchors = tmp_path / "anchors"
    anchors.mkdir()
    write_curve(anchors / "other.json", "Other", [r * 1.2 for r in CURVE[0]], CURVE[1])
    result = run("plot", mine, ref, "--anchors", anchors, "--reference", "ref", "-o", tmp_path / "rd.svg",
                 "--table", tmp_path / "bd.md")
    assert result.exit_code == 0, result.output
    table = (tmp_path / "bd.md").read_text()
    assert "BD against **ref** (ref.json)" in table and "BD-rate PSNR vs ref" in table
    assert "| mine | +11.11 %" in table  # 1/0.9 - 1
    assert "| Other (published) | +33.33 %" in table  # 1.2/0.9 - 1
    assert (tmp_path / "rd.svg").read_text().lstrip().startswith("<?xml")


def test_plot_without_the_default_anchors_skips_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "default_anchor_folder", lambda: tmp_path / "absent")
    mine = write_curve(tmp_path / "mine.json", "mine", *CURVE)
    result = run("plot", mine, "-o", tmp_path / "rd.png")
    assert result.exit_code == 0, result.output
    assert "no anchors at" in result.output and "BD against **mine**" in result.output
    assert (tmp_path / "rd.png").read_bytes()[:4] == b"\x89PNG"
    bad = run("plot", mine, "--reference", "vtm")
    assert bad.exit_code != 0 and "no curve 'vtm'" in bad.output
