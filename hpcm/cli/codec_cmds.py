"""Codec commands: ``hpcm encode``, ``hpcm decode``, ``hpcm inspect``, ``hpcm mismatch``."""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from pathlib import Path
from typing import Iterator, Optional

import click

from hpcm.log import LOG

from .options import (backend_option, checkpoint_option, default_backend, device_option, export_option,
                      image_folder, images_options, load_model, max_pixels_option, open_export, variant_option)


@contextlib.contextmanager
def _warnings_as_notices() -> Iterator[None]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        LOG.warning(str(w.message))


@contextlib.contextmanager
def _codec(variant: Optional[str], checkpoint: Optional[Path], export_dir: Optional[Path], backend: Optional[str],
           device: Optional[str], max_pixels: Optional[int]):  # noqa: ANN202 - yields a Codec
    """The codec the options describe: a model (eager) or an export folder's graphs."""
    from hpcm.runtime.session import codec_session

    backend = default_backend(backend, export_dir)
    if export_dir is not None:
        if variant is not None:
            raise click.UsageError("--variant and --export exclude each other: the export fixes the variant")
        if checkpoint is not None:
            raise click.UsageError("--checkpoint and --export exclude each other: the export holds its weights")
        with codec_session(backend, export=open_export(export_dir), device=device, max_pixels=max_pixels) as codec:
            yield codec
        return
    with codec_session(backend, model=load_model(variant, checkpoint), device=device, max_pixels=max_pixels) as codec:
        yield codec


@click.command()
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="bitstream to write (.hpcm)")
@variant_option()
@checkpoint_option
@export_option
@backend_option
@device_option
@max_pixels_option
def encode(image: Path, output: Path, variant: Optional[str], checkpoint: Optional[Path], export_dir: Optional[Path],
           backend: Optional[str], device: Optional[str], max_pixels: Optional[int]) -> None:
    """Compress IMAGE (8-bit RGB/gray, any size) to a .hpcm bitstream.

    With --export, the networks run as exported graphs (ONNX Runtime or TensorRT); any backend whose
    scale error stays within the stream's boundary guard decodes the stream. The PSNR printed is that
    of the encoder's own reconstruction (one synthesis pass after encoding, not timed), which is the
    image a decoder produces."""
    from hpcm.codec.codec import padded_size
    from hpcm.codec.images import check_pixel_count, load_image
    from hpcm.evaluation.metrics import psnr_rgb8
    from hpcm.files import atomic_output, check_output

    inputs = [image, checkpoint, export_dir]
    check_output(output, inputs)
    x = load_image(image, max_pixels)
    h, w = x.shape[-2:]
    with _codec(variant, checkpoint, export_dir, backend, device, max_pixels) as codec:
        check_pixel_count(str(image), h, w, max_pixels, padded_size(h, w, codec.alignment))
        start = time.perf_counter()
        with _warnings_as_notices():
            encoded = codec.compress(x)
        elapsed = time.perf_counter() - start
        psnr = psnr_rgb8(x, codec.synthesise(encoded.y_hat, h, w))
    data = encoded.data
    with atomic_output(output, inputs) as tmp:
        tmp.write_bytes(data)
    click.echo(f"{image.name}: {w}x{h}, {len(data)} bytes, {8 * len(data) / (h * w):.4f} bpp, PSNR {psnr:.2f} dB, "
               f"encoded in {elapsed:.2f} s ({codec.variant}, {codec.fingerprint}) -> {output}")


@click.command()
@click.argument("bitstream", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="PNG to write")
@checkpoint_option
@export_option
@backend_option
@device_option
@max_pixels_option
@click.option("--reference", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="the original image: print the PSNR of the decoded image against it")
def decode(bitstream: Path, output: Path, checkpoint: Optional[Path], export_dir: Optional[Path],
           backend: Optional[str], device: Optional[str], max_pixels: Optional[int], reference: Optional[Path]) -> None:
    """Decompress a .hpcm BITSTREAM to a PNG (with --export: on the export's graphs).

    Without --checkpoint or --export, the stream must come from the seeded untrained model of a
    built-in variant (the default of `hpcm encode`)."""
    from hpcm.codec import inspect
    from hpcm.codec.bitstream import read_file
    from hpcm.codec.images import check_pixel_count, load_image, save_png
    from hpcm.errors import BitstreamError, ImageError
    from hpcm.evaluation.metrics import psnr_rgb8
    from hpcm.files import check_output
    from hpcm.models import VARIANTS

    inputs = [bitstream, checkpoint, export_dir, reference]
    check_output(output, inputs)
    data = read_file(bitstream)
    original = load_image(reference, max_pixels) if reference is not None else None
    try:
        header = inspect(data)
    except BitstreamError as exc:
        raise BitstreamError(f"{bitstream}: {exc}") from exc
    # the claimed size, refused before a model is even loaded (the codec checks it again with its alignment)
    check_pixel_count(str(bitstream), header.height, header.width, max_pixels,
                      (header.height + header.pad_bottom, header.width + header.pad_right))
    # the name comes from an untrusted file: never let it select a variant .json path
    if checkpoint is None and export_dir is None and header.variant not in VARIANTS:
        raise click.ClickException(f"{bitstream}: encoded with variant {header.variant!r}; "
                                   "pass the checkpoint that encoded it with --checkpoint")
    variant = None if checkpoint is not None or export_dir is not None else header.variant
    with _codec(variant, checkpoint, export_dir, backend, device, max_pixels) as codec:
        start = time.perf_counter()
        try:
            with _warnings_as_notices():
                x_hat = codec.decompress(data).x_hat
        except (BitstreamError, ImageError) as exc:  # the stream's fault; table or model faults name their file
            raise type(exc)(f"{bitstream}: {exc}") from exc
        elapsed = time.perf_counter() - start
    quality = ""
    if original is not None:
        if tuple(original.shape[-2:]) != (header.height, header.width):
            raise ImageError(f"--reference {reference} is {original.shape[-1]}x{original.shape[-2]}, the stream "
                             f"holds a {header.width}x{header.height} image: give the image that was encoded")
        quality = f"PSNR {psnr_rgb8(original, x_hat):.2f} dB, "
    save_png(x_hat, output, inputs)
    click.echo(f"{bitstream.name}: {header.width}x{header.height}, "
               f"{8 * len(data) / (header.width * header.height):.4f} bpp, {quality}decoded in {elapsed:.2f} s "
               f"({codec.fingerprint}) -> {output}")


@click.command(name="inspect")
@click.argument("bitstream", type=click.Path(dir_okay=False, path_type=Path))
def inspect_cmd(bitstream: Path) -> None:
    """Print the header of a .hpcm BITSTREAM (checks its CRCs, needs no model)."""
    from hpcm.codec.bitstream import read_file, unpack
    from hpcm.errors import BitstreamError

    data = read_file(bitstream)
    try:
        header, streams = unpack(data)
    except BitstreamError as exc:
        raise BitstreamError(f"{bitstream}: {exc}") from exc
    info = {
        "variant": header.variant, "width": header.width, "height": header.height,
        "pad_bottom": header.pad_bottom, "pad_right": header.pad_right,
        "weights_digest": header.weights_digest.hex(), "tables_digest": header.tables_digest.hex(),
        "backend_digest": header.backend_digest.hex(), "bytes": len(data),
        "header_bytes": len(data) - sum(len(s) for s in streams),
        "stream_bytes": dict(zip(("z", "y", "guard"), map(len, streams))),
        "bpp": 8 * len(data) / (header.width * header.height),
    }
    click.echo(json.dumps(info, indent=2))


def _parse_eager_backend(item: str):  # noqa: ANN202 - (device, dtype)
    import torch

    device, _, dtype_name = item.partition("-")
    dtype = getattr(torch, dtype_name or "float32", None)
    if not device or not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise click.BadParameter(f"{item!r}: expected DEVICE-DTYPE such as cpu-float64, or a graph backend "
                                 "name with --export", param_hint="--backends")
    return device, dtype


@click.command()
@variant_option()
@checkpoint_option
@export_option
@images_options
@click.option("--backends", default="cpu-float32,cpu-float64", show_default=True,
              help="comma-separated eager DEVICE-DTYPE pairs (e.g. cpu-float32,cuda-float32) and, with --export, "
                   "graph backends (onnxruntime, tensorrt); the first is the reference")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the JSON report here instead of stdout")
def mismatch(variant: Optional[str], checkpoint: Optional[Path], export_dir: Optional[Path], images: Optional[Path],
             limit: int, crop: Optional[int], backends: str, output: Optional[Path]) -> None:
    """Count scale-bucket index mismatches between backends, per step, as JSON."""
    from hpcm.codec import Codec
    from hpcm.codec.images import load_folder
    from hpcm.files import atomic_output, check_output
    from hpcm.runtime.mismatch import count_mismatches
    from hpcm.runtime.runners import GRAPH_RUNNERS
    from hpcm.runtime.runners.eager import EagerRunner
    from hpcm.runtime.session import codec_parameters, open_runner

    if output is not None:
        check_output(output, [checkpoint])
    export = open_export(export_dir) if export_dir is not None else None
    model = load_model(variant, checkpoint)
    parameters = codec_parameters(model, export)
    with contextlib.ExitStack() as stack:
        codecs = {}
        for item in (b.strip() for b in backends.split(",") if b.strip()):
            if item in GRAPH_RUNNERS:
                runner = open_runner(item, export=export)
            else:
                device, dtype = _parse_eager_backend(item)
                runner = EagerRunner(model, device=device, dtype=dtype)
            codecs[item] = Codec(stack.enter_context(runner), parameters)
        if len(codecs) < 2:
            raise click.UsageError("--backends needs at least two backends")
        report = count_mismatches(codecs, load_folder(image_folder(images), limit, crop))
    text = json.dumps(report, indent=2)
    if output is None:
        click.echo(text)
    else:
        with atomic_output(output, [checkpoint]) as tmp:
            tmp.write_text(text)
        click.echo(f"wrote {output}")


commands = [encode, decode, inspect_cmd, mismatch]
