"""Codec commands: ``hpcm encode``, ``hpcm decode``, ``hpcm inspect``, ``hpcm mismatch``.

Input policy: 8-bit images only. Grayscale and palette images are converted to RGB (with a
notice); an alpha channel is dropped (with a notice, since the codec codes RGB only); 16-bit and
float images are refused rather than silently reduced to 8 bits.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import click

DEFAULT_VARIANT = "phase2"
DEFAULT_SEED = 0
UNTRAINED_NOTICE = ("notice: no checkpoint given, using a randomly initialised {variant} model (seed {seed}); "
                    "untrained weights give meaningless rate-distortion")
_HIGH_DEPTH_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_CONVERTED_MODES = {"L": "grayscale", "P": "palette", "1": "bilevel", "CMYK": "CMYK", "YCbCr": "YCbCr"}
_ALPHA_MODES = {"RGBA": "RGB", "LA": "L", "PA": "P", "RGBa": "RGB", "La": "L"}


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it only when the block succeeds."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise click.ClickException(f"output directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    # mkstemp creates 0600; give the result the permissions a plain open() would have
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_image(path: Path):  # noqa: ANN201 - returns a torch tensor; torch is imported lazily
    """(1, 3, H, W) float32 in [0, 1] following the module's input policy."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)
    except FileNotFoundError as exc:
        raise click.ClickException(f"{path}: no such file") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise click.ClickException(f"{path}: not a readable image ({exc})") from exc
    with im:
        # Pillow reads 16-bit RGB PNGs as mode "RGB", reducing them to 8 bits on load; only the
        # tile's raw mode (e.g. "RGB;16B") still shows the true depth before that happens.
        rawmodes = [str(t[3]) for t in (im.tile or []) if len(t) > 3]
        if im.mode in _HIGH_DEPTH_MODES or any(";16" in r for r in rawmodes):
            raise click.ClickException(
                f"{path}: {im.mode} image with more than 8 bits per sample; the codec takes 8-bit images "
                "(convert it to 8-bit RGB first)")
        try:
            im.load()
        except OSError as exc:
            raise click.ClickException(f"{path}: cannot decode image ({exc})") from exc
        if im.mode in _ALPHA_MODES:
            click.echo(f"notice: {path.name} has an alpha channel; it is dropped (the codec codes RGB only)", err=True)
            im = im.convert(_ALPHA_MODES[im.mode]) if im.mode != "PA" else im.convert("RGB")
        if im.mode == "P" and "transparency" in im.info:
            click.echo(f"notice: {path.name} has palette transparency; it is dropped", err=True)
        if im.mode in _CONVERTED_MODES:
            click.echo(f"notice: {path.name} is {_CONVERTED_MODES[im.mode]}; coding it as RGB", err=True)
            im = im.convert("RGB")
        if im.mode != "RGB":
            raise click.ClickException(f"{path}: unsupported image mode {im.mode}")
        arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0).contiguous()


def save_png(x, path: Path) -> None:  # noqa: ANN001 - a torch tensor (1, 3, H, W) in [0, 1]
    import torch
    from PIL import Image

    arr = (x[0].detach().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8)
    with atomic_output(path) as tmp:
        Image.fromarray(arr.permute(1, 2, 0).numpy()).save(tmp, format="PNG")


def load_model(variant: str | None, checkpoint: Path | None, device: str):  # noqa: ANN201
    """A codec-ready model: checkpoint weights, or the seeded untrained default (with a notice)."""
    from hpcm.models import build_model
    from hpcm.models.checkpoint import CheckpointError, load_checkpoint

    try:
        if checkpoint is not None:
            model = load_checkpoint(checkpoint, variant)
        else:
            name = variant or DEFAULT_VARIANT
            click.echo(UNTRAINED_NOTICE.format(variant=name, seed=DEFAULT_SEED), err=True)
            model = build_model(name, seed=DEFAULT_SEED)
    except (CheckpointError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if not model.has_entropy_tables:
        if checkpoint is not None:
            click.echo("notice: the checkpoint has no entropy tables; computing them (save the checkpoint after "
                       "model.update() to pin them)", err=True)
        model.update()
    try:
        return model.to(device).eval()
    except (RuntimeError, AssertionError) as exc:
        raise click.ClickException(f"cannot use device {device!r}: {exc}") from exc


def load_codec_model(variant: str | None, checkpoint: Path | None, device: str, export_dir: Path | None,
                     backend: str):  # noqa: ANN201 - an HPCM or a GraphModel
    """The eager model, or with ``export_dir`` the export's graphs on ``backend`` (GraphModel)."""
    if export_dir is None:
        return load_model(variant, checkpoint, device)
    if variant is not None:
        raise click.ClickException("--variant and --export exclude each other: the export fixes the variant")
    from hpcm.runtime.export_loading import open_export
    from hpcm.runtime.graph_model import GraphModel

    try:
        model, runner = open_export(export_dir, backend, device, checkpoint, log=lambda m: click.echo(m, err=True))
        return GraphModel(model, runner)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc


def _backend_name(model) -> str:  # noqa: ANN001 - an HPCM or a GraphModel
    return getattr(model, "backend_fingerprint", "eager PyTorch")


export_option = click.option(
    "--export", "export_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="run the networks as the graphs of this hpcm-export directory (its variant, weights and tables)")
backend_option = click.option(
    "--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True,
    help="graph backend for --export (--device picks ONNX Runtime's provider)")


@contextmanager
def _warnings_as_notices() -> Iterator[None]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)


@click.command()
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="bitstream to write (.hpcm)")
@click.option("--variant", "-v", default=None, help=f"model variant (default {DEFAULT_VARIANT}, or the checkpoint's)")
@click.option("--checkpoint", "-c", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--device", default="cpu", show_default=True,
              help="device computing the entropy parameters; decode on the same kind of device")
@export_option
@backend_option
def encode(image: Path, output: Path, variant: str | None, checkpoint: Path | None, device: str,
           export_dir: Path | None, backend: str) -> None:
    """Compress IMAGE (8-bit RGB/gray, any size) to a .hpcm bitstream.

    With --export, the networks run as exported graphs (ONNX Runtime or TensorRT); any backend whose
    scale error stays within the stream's boundary guard decodes it."""
    from hpcm.runtime.codec import compress

    x = load_image(image)
    model = load_codec_model(variant, checkpoint, device, export_dir, backend)
    start = time.perf_counter()
    try:
        with _warnings_as_notices():
            data = compress(model, x)
    except ValueError as exc:
        raise click.ClickException(f"{image}: {exc}") from exc
    elapsed = time.perf_counter() - start
    with atomic_output(output) as tmp:
        tmp.write_bytes(data)
    h, w = x.shape[-2:]
    click.echo(f"{image.name}: {w}x{h}, {len(data)} bytes, {8 * len(data) / (h * w):.4f} bpp, "
               f"encoded in {elapsed:.2f} s ({model.spec.name}, {_backend_name(model)}) -> {output}")


@click.command()
@click.argument("bitstream", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="PNG to write")
@click.option("--checkpoint", "-c", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="the checkpoint that encoded the bitstream (default: the seeded untrained model)")
@click.option("--device", default="cpu", show_default=True)
@export_option
@backend_option
def decode(bitstream: Path, output: Path, checkpoint: Path | None, device: str, export_dir: Path | None,
           backend: str) -> None:
    """Decompress a .hpcm BITSTREAM to a PNG (with --export: on the export's graphs)."""
    from hpcm.runtime.codec import decompress, inspect
    from hpcm.runtime.errors import BitstreamError

    data = _read_bitstream(bitstream)
    try:
        header = inspect(data)
    except BitstreamError as exc:
        raise click.ClickException(f"{bitstream}: {exc}") from exc
    if checkpoint is None and export_dir is None:
        from hpcm.models import VARIANTS

        # the name comes from an untrusted file: never let it select a variant .json path
        if header.variant not in VARIANTS:
            raise click.ClickException(f"{bitstream}: encoded with variant {header.variant!r}; "
                                       "pass the checkpoint that encoded it with --checkpoint")
    if export_dir is not None:
        model = load_codec_model(None, checkpoint, device, export_dir, backend)
    else:
        model = load_model(None if checkpoint else header.variant, checkpoint, device)
    start = time.perf_counter()
    try:
        with _warnings_as_notices():
            x_hat = decompress(model, data)
    except BitstreamError as exc:
        raise click.ClickException(f"{bitstream}: {exc}") from exc
    elapsed = time.perf_counter() - start
    save_png(x_hat, output)
    click.echo(f"{bitstream.name}: {header.width}x{header.height}, "
               f"{8 * len(data) / (header.width * header.height):.4f} bpp, decoded in {elapsed:.2f} s "
               f"({_backend_name(model)}) -> {output}")


def _read_bitstream(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise click.ClickException(f"{path}: no such file") from exc
    except OSError as exc:
        raise click.ClickException(f"{path}: {exc}") from exc


@click.command(name="inspect")
@click.argument("bitstream", type=click.Path(dir_okay=False, path_type=Path))
def inspect_cmd(bitstream: Path) -> None:
    """Print the header of a .hpcm BITSTREAM (checks its CRCs, needs no model)."""
    from hpcm.runtime.bitstream import unpack
    from hpcm.runtime.errors import BitstreamError

    data = _read_bitstream(bitstream)
    try:
        header, streams = unpack(data)
    except BitstreamError as exc:
        raise click.ClickException(f"{bitstream}: {exc}") from exc
    info = {
        "variant": header.variant, "width": header.width, "height": header.height,
        "pad_bottom": header.pad_bottom, "pad_right": header.pad_right,
        "weights_digest": header.weights_digest.hex(), "tables_digest": header.tables_digest.hex(),
        "backend_digest": header.backend_digest.hex(), "bytes": len(data),
        "header_bytes": len(data) - sum(len(s) for s in streams),
        "stream_bytes": {"z": len(streams[0]), "y": len(streams[1])} if len(streams) == 2 else [len(s) for s in streams],
        "bpp": 8 * len(data) / (header.width * header.height),
    }
    click.echo(json.dumps(info, indent=2))


def _default_kodak() -> Path:
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "kodak"


@click.command()
@click.option("--variant", "-v", default=None, help=f"model variant (default {DEFAULT_VARIANT}, or the checkpoint's)")
@click.option("--checkpoint", "-c", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--images", type=click.Path(path_type=Path), default=None,
              help="folder of images (default ../shared/data/kodak; synthetic images when absent)")
@click.option("--limit", default=2, show_default=True, help="number of images")
@click.option("--crop", default=None, type=int, help="top-left square crop side in pixels (speeds up CPU runs)")
@click.option("--backends", default="cpu-float32,cpu-float64", show_default=True,
              help="comma-separated DEVICE-DTYPE pairs; the first is the reference "
                   "(e.g. cpu-float32,cuda-float32)")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the JSON report here instead of stdout")
def mismatch(variant: str | None, checkpoint: Path | None, images: Path | None, limit: int, crop: int | None,
             backends: str, output: Path | None) -> None:
    """Count scale-bucket index mismatches between backends, per step, as JSON."""
    import torch

    from hpcm.runtime.mismatch import count_mismatches, load_images, torch_backend

    model = load_model(variant, checkpoint, "cpu")
    chosen = {}
    for item in backends.split(","):
        device, _, dtype_name = item.strip().partition("-")
        dtype = getattr(torch, dtype_name or "float32", None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise click.ClickException(f"bad backend {item!r}: expected DEVICE-DTYPE such as cpu-float64")
        if device.startswith("cuda") and not torch.cuda.is_available():
            click.echo(f"notice: skipping backend {item!r}: no CUDA device", err=True)
            continue
        try:
            chosen[item.strip()] = torch_backend(model, device, dtype)
        except RuntimeError as exc:
            raise click.ClickException(f"backend {item!r}: {exc}") from exc
    if len(chosen) < 2:
        raise click.ClickException("need at least two usable backends")
    folder = images if images is not None else _default_kodak()
    if not folder.is_dir():
        click.echo(f"notice: {folder} not found, using synthetic images", err=True)
    report = count_mismatches(model, load_images(folder, limit, crop), chosen)
    text = json.dumps(report, indent=2)
    if output is None:
        click.echo(text)
    else:
        with atomic_output(output) as tmp:
            tmp.write_text(text)
        click.echo(f"wrote {output}")


commands = [encode, decode, inspect_cmd, mismatch]
