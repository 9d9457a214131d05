"""Images in and out of the codec, in one place (every command and tool loads images through here).

Input policy: 8-bit images only. Grayscale and palette images are converted to RGB (with a notice);
an alpha channel is dropped (with a notice, since the codec codes RGB only); 16-bit and float
images are refused rather than silently reduced to 8 bits. Problems raise ``ImageError`` naming
the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
import torch

from hpcm.errors import ImageError
from hpcm.files import atomic_output
from hpcm.log import LOG

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
_HIGH_DEPTH_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_CONVERTED_MODES = {"L": "grayscale", "P": "palette", "1": "bilevel", "CMYK": "CMYK", "YCbCr": "YCbCr"}
_ALPHA_MODES = {"RGBA": "RGB", "LA": "L", "PA": "P", "RGBa": "RGB", "La": "L"}


def load_image(path: Path) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1] following the module's input policy."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        im = Image.open(path)
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: no such file") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from exc
    with im:
        # Pillow reads 16-bit RGB PNGs as mode "RGB", reducing them to 8 bits on load; only the
        # tile's raw mode (e.g. "RGB;16B") still shows the true depth before that happens.
        rawmodes = [str(t[3]) for t in (im.tile or []) if len(t) > 3]
        if im.mode in _HIGH_DEPTH_MODES or any(";16" in r for r in rawmodes):
            raise ImageError(f"{path}: {im.mode} image with more than 8 bits per sample; the codec takes 8-bit "
                             "images (convert it to 8-bit RGB first)")
        try:
            im.load()
        except OSError as exc:
            raise ImageError(f"{path}: cannot decode image ({exc})") from exc
        if im.mode in _ALPHA_MODES:
            LOG.warning(f"{path.name} has an alpha channel; it is dropped (the codec codes RGB only)")
            im = im.convert(_ALPHA_MODES[im.mode]) if im.mode != "PA" else im.convert("RGB")
        if im.mode == "P" and "transparency" in im.info:
            LOG.warning(f"{path.name} has palette transparency; it is dropped")
        if im.mode in _CONVERTED_MODES:
            LOG.warning(f"{path.name} is {_CONVERTED_MODES[im.mode]}; coding it as RGB")
            im = im.convert("RGB")
        if im.mode != "RGB":
            raise ImageError(f"{path}: unsupported image mode {im.mode}")
        arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> (H, W, 3) uint8, rounding as every decoder output is rounded."""
    return (x[0].detach().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


def save_png(x: torch.Tensor, path: Path, inputs: Iterable[Path] = ()) -> None:
    """Write ``x`` (1, 3, H, W) in [0, 1] as an 8-bit PNG, atomically (never over one of ``inputs``)."""
    from PIL import Image

    with atomic_output(path, inputs) as tmp:
        Image.fromarray(to_uint8(x)).save(tmp, format="PNG")


def image_files(folder: Path) -> list[Path]:
    """The image files of ``folder`` (not recursive), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


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
        for path, x in iterate_images(image_files(Path(folder))):
            out.append((path.name, x[..., :crop, :crop] if crop else x))
            if len(out) >= limit:
                break
        if out:
            return out
        LOG.warning(f"no readable images in {folder}: using synthetic images")
    elif folder is not None:
        LOG.warning(f"{folder} not found: using synthetic images")
    return synthetic_images(limit, crop or 256, seed)


def iterate_images(paths: Iterable[Path]) -> Iterator[tuple[Path, torch.Tensor]]:
    """(path, image) for each readable image; a bad one is skipped with a notice naming it."""
    for path in paths:
        try:
            yield path, load_image(path)
        except ImageError as exc:
            LOG.warning(f"skipping {exc}")


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
