"""Classical image codecs through Pillow, measured the same way as the learned codec.

JPEG, WebP and AVIF are Pillow's own (AVIF where Pillow was built with libavif, as its PyPI wheels
are since 11.3); JPEG XL comes from ``pillow-jxl-plugin`` and HEVC intra (HEIF) from ``pillow-heif``
(the ``codecs`` extra). Each codec is used with Pillow's defaults (4:2:0 chroma) and its
``quality`` setting swept; the rate is the whole file Pillow writes (container included).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import io
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from hpcm.errors import ConfigError, HPCMError


class CodecUnavailableError(HPCMError, RuntimeError):
    """A classical codec whose library is not installed here."""


def _register_heif() -> None:
    importlib.import_module("pillow_heif").register_heif_opener()


def _register_jxl() -> None:
    importlib.import_module("pillow_jxl")


@dataclass(frozen=True)
class ClassicalCodec:
    name: str  # as --codec spells it
    title: str  # as the R-D figures name it
    pillow_format: str
    qualities: tuple[int, ...]  # the default sweep, low to high
    feature: Optional[str] = None  # PIL.features name that must be present
    package: Optional[str] = None  # PyPI package that provides the codec
    register: Optional[Callable[[], None]] = None  # makes the format known to Pillow
    quality_range: tuple[int, int] = (0, 100)  # what its encoder accepts (Pillow clamps JPEG's silently)

    def check_quality(self, quality: int) -> int:
        """``quality`` when the codec takes it, else a ConfigError naming the range."""
        low, high = self.quality_range
        if not low <= quality <= high:
            raise ConfigError(f"--quality {quality}: {self.title} takes qualities {low}..{high}")
        return quality

    def library(self) -> str:
        """The codec library and its version, for the result's description."""
        from PIL import __version__ as pillow_version
        from PIL import features

        if self.package:
            return f"{self.package} {importlib.metadata.version(self.package)}"
        if self.feature == "jpg" and features.check("libjpeg_turbo"):
            return f"Pillow {pillow_version}, libjpeg-turbo {features.version('libjpeg_turbo')}"
        version = features.version(self.feature) if self.feature else None
        return f"Pillow {pillow_version}" + (f", lib{self.feature} {version}" if version else "")

    def check_available(self) -> None:
        """Raise ``CodecUnavailableError`` with what to install when this codec cannot run here."""
        from PIL import __version__ as pillow_version
        from PIL import features

        if self.package:
            try:
                self.register()
            except ImportError as exc:
                raise CodecUnavailableError(f"--codec {self.name} needs the {self.package} package "
                                            f"(pip install {self.package}, or the package's [codecs] extra); "
                                            f"importing it failed: {exc}") from exc
        elif self.feature and not features.check(self.feature):
            raise CodecUnavailableError(f"--codec {self.name}: this Pillow ({pillow_version}) was built without "
                                        f"{self.feature}; install a Pillow wheel from PyPI (11.3 or later has AVIF)")

    def encode(self, image: np.ndarray, quality: int) -> bytes:
        """The file Pillow writes for ``image`` (H, W, 3) uint8 at ``quality``."""
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=self.pillow_format, quality=int(quality))
        return buffer.getvalue()

    @staticmethod
    def decode(data: bytes) -> np.ndarray:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)


_SWEEP = tuple(range(5, 100, 5))  # CompressAI's JPEG and WebP anchors use these 19 qualities
_SHORT_SWEEP = (10, 20, 30, 40, 50, 60, 70, 80, 90, 95)

CLASSICAL_CODECS: dict[str, ClassicalCodec] = {
    codec.name: codec
    for codec in (
        ClassicalCodec("jpeg", "JPEG", "JPEG", _SWEEP, feature="jpg"),
        ClassicalCodec("webp", "WebP", "WEBP", _SWEEP, feature="webp"),
        ClassicalCodec("avif", "AVIF", "AVIF", _SHORT_SWEEP, feature="avif"),
        ClassicalCodec("jxl", "JPEG XL", "JXL", _SHORT_SWEEP, package="pillow-jxl-plugin", register=_register_jxl,
                       quality_range=(0, 99)),  # its encoder refuses 100
        ClassicalCodec("heic", "HEVC intra (HEIF)", "HEIF", _SHORT_SWEEP, package="pillow-heif",
                       register=_register_heif),
    )
}


def from_uint8_image(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0).contiguous()
