"""Images in and out of the codec, in one place: every command and tool loads images through here.

Input policy: 8-bit images only. Grayscale and palette images are converted to RGB (with a notice);
an alpha channel is dropped (with a notice, since the codec codes RGB only); 16-bit and float
images are refused rather than silently reduced to 8 bits. An image is turned upright as its EXIF
orientation says, and only the first frame of an animation or multi-page file is coded (both with a
notice). Images over the pixel limit (``--max-pixels``, ``HPCM_MAX_PIXELS``) are refused from their
header, before their pixel data is decompressed, so a decompression bomb costs nothing; images
whose pixel data is cut short are refused instead of being coded with missing rows. Problems raise
``ImageError`` naming the file, in one line.
"""

from __future__ import annotations

import contextlib
import io
import math
import struct
import warnings
import zlib
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
import torch

from hpcm import config
from hpcm.errors import ImageError
from hpcm.files import atomic_output
from hpcm.log import LOG

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp", ".gif")
_HIGH_DEPTH_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_CONVERTED_MODES = {"L": "grayscale", "P": "palette", "1": "bilevel", "CMYK": "CMYK", "YCbCr": "YCbCr"}
_ALPHA_MODES = {"RGBA": "RGB", "LA": "L", "PA": "P", "RGBa": "RGB", "La": "L"}
_EXIF_ORIENTATION = 0x0112
# PNG: samples per pixel of each colour type, and the Adam7 passes (x0, y0, dx, dy)
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_LIMIT_HINT = "raise it with --max-pixels or HPCM_MAX_PIXELS where memory allows: about 1 GB per megapixel"


def pixel_limit(max_pixels: Optional[int] = None) -> int:
    """``max_pixels``, or the configured limit (``HPCM_MAX_PIXELS``, default ``config.DEFAULT_MAX_PIXELS``)."""
    return config.max_pixels() if max_pixels is None else int(max_pixels)


def check_pixel_count(what: str, height: int, width: int, max_pixels: Optional[int] = None,
                      padded: Optional[tuple[int, int]] = None) -> None:
    """Refuse an image of ``height`` x ``width`` (``padded``: the size the networks process) above the limit.

    The one check of the pixel limit: image loading, the encoder and the decoder all call it."""
    limit = pixel_limit(max_pixels)
    net_height, net_width = padded or (height, width)
    pixels = net_height * net_width
    if pixels <= limit:
        return
    size = f"{width}x{height}"
    if (net_height, net_width) != (height, width):
        size += f", padded to {net_width}x{net_height} for the networks,"
    raise ImageError(f"{what}: {size} is {pixels:,} pixels, above the limit of {limit:,} pixels ({_LIMIT_HINT})")


def _png_data_complete(path: Path, image, data: Optional[bytes]) -> Optional[str]:  # noqa: ANN001 - a PIL image
    """None when the PNG's compressed pixel data holds every row, else what is missing.

    Pillow accepts a zlib stream that ends early and leaves the missing rows black, so the byte count
    is checked here (streamed, never holding the decompressed data)."""
    with open(path, "rb") if data is None else io.BytesIO(data) as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
        width, height = image.size
        expected = decompressed = 0
        inflater = zlib.decompressobj()
        while True:
            head = f.read(8)
            if len(head) < 8:
                break
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IHDR":
                ihdr = f.read(length)
                depth, colour, interlaced = ihdr[8], ihdr[9], ihdr[12]
                bits = _PNG_SAMPLES.get(colour, 1) * depth
                passes = _ADAM7 if interlaced else ((0, 0, 1, 1),)
                for x0, y0, dx, dy in passes:
                    columns, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
                    if columns > 0 and rows > 0:
                        expected += rows * (1 + (columns * bits + 7) // 8)
                f.seek(4, 1)
            elif kind == b"IDAT":
                left = length
                while left and not inflater.eof:
                    data = f.read(min(left, 1 << 16))
                    if not data:
                        break
                    left -= len(data)
                    while data and not inflater.eof and decompressed <= expected:
                        decompressed += len(inflater.decompress(data, 1 << 20))
                        data = inflater.unconsumed_tail
                f.seek(left + 4, 1)
            elif kind == b"IEND":
                break
            else:
                f.seek(length + 4, 1)
    if decompressed < expected:
        return f"its pixel data is cut short ({decompressed:,} of {expected:,} bytes): the file is truncated or damaged"
    return None


def _open(path: Path, limit: int, data: Optional[bytes]):  # noqa: ANN202 - a PIL image
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path if data is None else io.BytesIO(data))
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise ImageError(f"{path}: is a folder, not an image") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: too many pixels for Pillow to open safely ({exc}); the codec's limit is "
                         f"{limit:,} pixels") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{path}: not a readable image (unknown or damaged format)") from exc
    except Exception as exc:  # Pillow's format parsers raise many types on damaged headers
        raise ImageError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc
    return image


def read_image(path: Path, max_pixels: Optional[int] = None, data: Optional[bytes] = None) -> np.ndarray:
    """(H, W, 3) uint8 following the module's input policy. ``data``: the file's bytes where another
    process read them (a worker of ``hpcm compress``); ``path`` then only names the image."""
    from PIL import Image, ImageOps

    path = Path(path)
    limit = pixel_limit(max_pixels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit is the policy
        image = _open(path, limit, data)
        with contextlib.ExitStack() as stack:
            stack.callback(image.close)
            width, height = image.size
            check_pixel_count(str(path), height, width, limit)
            # Pillow reads 16-bit RGB PNGs as mode "RGB", reducing them to 8 bits on load; only the
            # tile's raw mode (e.g. "RGB;16B") still shows the true depth before that happens.
            rawmodes = [str(t[3]) for t in (image.tile or []) if len(t) > 3]
            if image.mode in _HIGH_DEPTH_MODES or any(";16" in r for r in rawmodes):
                raise ImageError(f"{path}: {image.mode} image with more than 8 bits per sample; the codec takes "
                                 "8-bit images (convert it to 8-bit RGB first)")
            try:
                image.load()
                frames = getattr(image, "n_frames", 1)
                orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
            except Exception as exc:  # truncated or damaged pixel data (OSError, ValueError, SyntaxError, ...)
                reason = str(exc).split("\n")[0] or type(exc).__name__
                raise ImageError(f"{path}: cannot decode its pixel data ({reason}); the file is truncated or "
                                 "damaged") from exc
            if image.format == "PNG":
                missing = _png_data_complete(path, image, data)
                if missing:
                    raise ImageError(f"{path}: {missing}")
            if frames > 1:
                LOG.warning(f"{path.name} has {frames} frames; coding the first only")
            if orientation in range(2, 9):
                LOG.warning(f"{path.name}: turned upright as its EXIF orientation ({orientation}) says")
                image = ImageOps.exif_transpose(image)
                stack.callback(image.close)
            if image.mode in _ALPHA_MODES:
                LOG.warning(f"{path.name} has an alpha channel; it is dropped (the codec codes RGB only)")
                image = image.convert(_ALPHA_MODES[image.mode]) if image.mode != "PA" else image.convert("RGB")
            if image.mode == "P" and "transparency" in image.info:
                LOG.warning(f"{path.name} has palette transparency; it is dropped")
            if image.mode in _CONVERTED_MODES:
                LOG.warning(f"{path.name} is {_CONVERTED_MODES[image.mode]}; coding it as RGB")
                image = image.convert("RGB")
            if image.mode != "RGB":
                raise ImageError(f"{path}: unsupported image mode {image.mode}")
            pixels = np.array(image, dtype=np.uint8)
    for warning in caught:
        LOG.warning(f"{path.name}: {warning.message}")
    return pixels


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(pixels.astype(np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0).contiguous()


def load_image(path: Path, max_pixels: Optional[int] = None) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1] following the module's input policy."""
    return to_tensor(read_image(path, max_pixels))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> (H, W, 3) uint8, rounding as every decoder output is rounded."""
    return (x[0].detach().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


def to_8bit(x: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1] -> the same in 0..255 levels (float64), as every decoder output is rounded."""
    return (x.detach().to(torch.float64).cpu().clamp(0.0, 1.0) * 255.0).round()


def psnr_rgb8(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """PSNR in dB of ``x_hat`` against ``x`` on 8-bit RGB (CompressAI's ``psnr-rgb``); inf for identical images."""
    mse = float(((to_8bit(x) - to_8bit(x_hat)) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def png_bytes(x: torch.Tensor) -> bytes:
    """``x`` (1, 3, H, W) in [0, 1] as the bytes of an 8-bit PNG (Pillow's defaults: the same bytes for
    the same image wherever the same Pillow and zlib run)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(to_uint8(x)).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(x: torch.Tensor, path: Path, inputs: Iterable[Optional[Path]] = ()) -> None:
    """Write ``x`` (1, 3, H, W) in [0, 1] as an 8-bit PNG, atomically (never over one of ``inputs``)."""
    with atomic_output(path, inputs) as tmp:
        tmp.write_bytes(png_bytes(x))


def image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The image files of ``folder`` (with ``recursive``, of its subfolders too), sorted by path."""
    paths = Path(folder).rglob("*") if recursive else Path(folder).iterdir()
    return sorted(p for p in paths if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def iterate_images(paths: Iterable[Path], max_pixels: Optional[int] = None) -> Iterator[tuple[Path, np.ndarray]]:
    """(path, (H, W, 3) uint8 pixels) for each readable image; a bad one is skipped with a notice naming it."""
    for path in paths:
        try:
            yield path, read_image(path, max_pixels)
        except ImageError as exc:
            LOG.warning(f"skipping {exc}")


def load_folder(folder: Optional[Path], limit: int, crop: Optional[int] = None,
                seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    """Up to ``limit`` images of ``folder`` (sorted; optionally their top-left ``crop`` x ``crop``),
    skipping unreadable ones with a notice; smooth synthetic images when the folder is absent."""
    if limit < 1:
        raise ImageError(f"the number of images must be at least 1, got {limit}")
    if crop is not None and crop < 1:
        raise ImageError(f"the crop side must be at least 1 pixel, got {crop}")
    out = []
    if folder is not None and Path(folder).is_dir():
        for path, pixels in iterate_images(image_files(Path(folder))):
            out.append((path.name, to_tensor(pixels[:crop, :crop] if crop else pixels)))
            if len(out) >= limit:
                break
        if out:
            return out
        LOG.warning(f"no readable images in {folder}: using synthetic images")
    elif folder is not None:
        LOG.warning(f"{folder} not found: using synthetic images")
    return synthetic_images(limit, crop or 256, seed)


def synthetic_images(count: int, side: int, seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    """Smooth random images (coarse noise upsampled, plus fine noise): a stand-in for photos."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        coarse = torch.rand(1, 3, side // 16 + 1, side // 16 + 1, generator=gen)
        x = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
        x = (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
        out.append((f"synthetic{i}", x))
    return out
