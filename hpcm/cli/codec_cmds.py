"""Codec commands: ``hpcm encode``, ``hpcm decode``, ``hpcm compress``, ``hpcm decompress`` (folders),
``hpcm inspect``, ``hpcm mismatch``."""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from pathlib import Path
from typing import Iterator, Optional

import click

from hpcm.log import LOG

from .options import (checkpoint_option, codec_options, combine, decoder_options, export_option, image_folder,
                      images_options, split_list, variant_option, workers_options)


@contextlib.contextmanager
def _warnings_as_notices() -> Iterator[None]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        LOG.warning(str(w.message))


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """A fault of the stream or image read from ``path`` names that file (table, model and export faults
    name their own files)."""
    from hpcm.errors import BitstreamError, ImageError

    try:
        yield
    except (BitstreamError, ImageError) as exc:
        raise type(exc)(f"{path}: {exc}") from exc


@click.command()
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="bitstream to write (.hpcm)")
@codec_options
def encode(image: Path, output: Path, variant: Optional[str], checkpoint: Optional[Path], export_dir: Optional[Path],
           backend: Optional[str], device: Optional[str], max_pixels: Optional[int]) -> None:
    """Compress IMAGE (8-bit RGB/gray, any size) to a .hpcm bitstream.

    With --export, the networks run as exported graphs (ONNX Runtime or TensorRT); any backend whose
    scale error stays within the stream's boundary guard decodes the stream. The PSNR printed is that
    of the encoder's own reconstruction (one synthesis pass after encoding, not timed), which is the
    image a decoder produces."""
    from hpcm.codec.codec import padded_size
    from hpcm.codec.images import check_pixel_count, load_image, psnr_rgb8
    from hpcm.files import atomic_output, check_output
    from hpcm.runtime.session import CodecRequest, open_codec

    inputs = [image, checkpoint, export_dir, variant]
    check_output(output, inputs)
    x = load_image(image, max_pixels)
    h, w = x.shape[-2:]
    request = CodecRequest(checkpoint=checkpoint, export=export_dir, variant=variant, backend=backend, device=device,
                           max_pixels=max_pixels)
    with open_codec(request) as session:
        codec = session.codec
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
@decoder_options
@click.option("--reference", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="the original image: print the PSNR of the decoded image against it")
def decode(bitstream: Path, output: Path, checkpoint: Optional[Path], export_dir: Optional[Path],
           backend: Optional[str], device: Optional[str], max_pixels: Optional[int], reference: Optional[Path]) -> None:
    """Decompress a .hpcm BITSTREAM to a PNG (with --export: on the export's graphs).

    Without --checkpoint or --export, the stream must come from the seeded untrained model of a
    built-in variant (the default of `hpcm encode`)."""
    from hpcm.codec.bitstream import read_file
    from hpcm.codec.images import load_image, psnr_rgb8, save_png
    from hpcm.errors import ImageError
    from hpcm.files import check_output
    from hpcm.runtime.session import CodecRequest, open_codec

    inputs = [bitstream, checkpoint, export_dir, reference]
    check_output(output, inputs)
    stream = read_file(bitstream)  # its header is parsed here, once
    header = stream.header
    original = load_image(reference, max_pixels) if reference is not None else None
    request = CodecRequest(checkpoint=checkpoint, export=export_dir, header=header, backend=backend, device=device,
                           max_pixels=max_pixels)
    with _naming(bitstream), open_codec(request) as session:
        start = time.perf_counter()
        with _warnings_as_notices():
            x_hat = session.codec.decompress(stream).x_hat
        elapsed = time.perf_counter() - start
    quality = ""
    if original is not None:
        if tuple(original.shape[-2:]) != (header.height, header.width):
            raise ImageError(f"--reference {reference} is {original.shape[-1]}x{original.shape[-2]}, the stream "
                             f"holds a {header.width}x{header.height} image: give the image that was encoded")
        quality = f"PSNR {psnr_rgb8(original, x_hat):.2f} dB, "
    save_png(x_hat, output, inputs)
    click.echo(f"{bitstream.name}: {header.width}x{header.height}, "
               f"{8 * stream.size / (header.width * header.height):.4f} bpp, {quality}decoded in {elapsed:.2f} s "
               f"({session.codec.fingerprint}) -> {output}")


folder_options = combine(
    click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
                 help="folder to write the same tree into (created if absent)"),
    workers_options,
    click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 help="also write the summary, every file and every failure as JSON here"),
    click.option("--progress/--no-progress", default=True, show_default=True, help="show a progress bar"),
)


def _code_folder(mode: str, source: Path, output: Path, request_fields: dict, workers: Optional[int],
                 threads: Optional[int], ray_address: Optional[str], report: Optional[Path], progress: bool) -> None:
    from hpcm.runtime.folders import code_folder
    from hpcm.runtime.session import CodecRequest

    summary = code_folder(mode, source, output, CodecRequest(**request_fields), workers=workers, threads=threads,
                          ray_address=ray_address, report=report, progress=progress)
    click.echo(summary.line())
    if report is not None:
        click.echo(f"wrote {report}")


@click.command()
@click.argument("source", type=click.Path(file_okay=False, path_type=Path))
@folder_options
@codec_options
def compress(source: Path, output: Path, workers: Optional[int], threads: Optional[int], ray_address: Optional[str],
             report: Optional[Path], progress: bool, variant: Optional[str], checkpoint: Optional[Path],
             export_dir: Optional[Path], backend: Optional[str], device: Optional[str],
             max_pixels: Optional[int]) -> None:
    """Compress every image under the folder SOURCE (recursively) into the same tree of .hpcm streams.

    Runs on a pool of workers on this machine, or on a Ray cluster with --ray. A rerun skips the
    streams that are complete and from this codec; an image that cannot be coded is reported with its
    reason and the run goes on. Prints a summary (images, bytes, bpp, failures, images/s)."""
    _code_folder("compress", source, output, {"checkpoint": checkpoint, "export": export_dir, "variant": variant,
                                              "backend": backend, "device": device, "max_pixels": max_pixels},
                 workers, threads, ray_address, report, progress)


@click.command()
@click.argument("source", type=click.Path(file_okay=False, path_type=Path))
@folder_options
@decoder_options
def decompress(source: Path, output: Path, workers: Optional[int], threads: Optional[int],
               ray_address: Optional[str], report: Optional[Path], progress: bool, checkpoint: Optional[Path],
               export_dir: Optional[Path], backend: Optional[str], device: Optional[str],
               max_pixels: Optional[int]) -> None:
    """Decompress every .hpcm stream under the folder SOURCE (recursively) into the same tree of PNGs.

    As compress: workers on this machine or a Ray cluster (--ray), resumable, failures reported per
    file. Without --checkpoint or --export the streams must come from a seeded built-in variant."""
    _code_folder("decompress", source, output, {"checkpoint": checkpoint, "export": export_dir, "backend": backend,
                                                "device": device, "max_pixels": max_pixels},
                 workers, threads, ray_address, report, progress)


@click.command(name="inspect")
@click.argument("bitstream", type=click.Path(dir_okay=False, path_type=Path))
def inspect_cmd(bitstream: Path) -> None:
    """Print the header of a .hpcm BITSTREAM (checks its CRCs, needs no model)."""
    from hpcm.codec.bitstream import read_file

    stream = read_file(bitstream)
    header = stream.header
    info = {
        "format_version": header.version, "variant": header.variant, "width": header.width, "height": header.height,
        "pad_bottom": header.pad_bottom, "pad_right": header.pad_right,
        "weights_digest": header.weights_digest.hex(), "tables_digest": header.tables_digest.hex(),
        "backend_digest": header.backend_digest.hex(), "bytes": stream.size,
        "header_bytes": stream.size - sum(len(s) for s in stream.streams),
        "stream_bytes": dict(zip(("z", "y", "guard"), map(len, stream.streams))),
        "bpp": 8 * stream.size / (header.width * header.height),
    }
    click.echo(json.dumps(info, indent=2))


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
    from hpcm.codec.images import load_folder
    from hpcm.files import atomic_output, check_output
    from hpcm.runtime.mismatch import backend_codecs, count_mismatches
    from hpcm.runtime.session import CodecRequest

    inputs = [checkpoint, export_dir, variant, image_folder(images)]
    if output is not None:
        check_output(output, inputs)
    request = CodecRequest(checkpoint=checkpoint, export=export_dir, variant=variant)
    with backend_codecs(request, split_list((backends,))) as codecs:
        report = count_mismatches(codecs, load_folder(image_folder(images), limit, crop))
    text = json.dumps(report, indent=2)
    if output is None:
        click.echo(text)
    else:
        with atomic_output(output, inputs) as tmp:
            tmp.write_text(text)
        click.echo(f"wrote {output}")

