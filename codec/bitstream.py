"""Container format of an HPCM bitstream (.hpcm).

All integers little-endian::

    magic            4 bytes  b"HPCM"
    version          u8       FORMAT_VERSION (written); READABLE_VERSIONS are decoded
    variant          u8 length + ASCII        (at most MAX_NAME bytes)
    weights digest   8 bytes (SHA-256 prefix of the model's weights, CDF tables excluded)
    tables digest    8 bytes (SHA-256 prefix of the stored scale table and CDF tables)
    backend digest   8 bytes (SHA-256 prefix of the description of what computed the entropy
                     parameters and at what precision, e.g. "torch-2.13.0+cpu/cpu/float32")
    height, width    u32, u32                 (original image size)
    pad bottom/right u16, u16                 (replicate padding added by the encoder)
    streams          u8 count, then per stream: u32 length, u32 CRC-32
    header CRC-32    u32 over every byte above
    payload          the streams, back to back; the file ends exactly after the last one

The three streams are z, y and the boundary guard (``hpcm.codec.codec``). Format 3 codes each
progressive step of z and y as independent rANS substreams (``rans.py``), format 2 one rANS stream
for all steps; the container and the guard stream are the same in both.

Parsing touches only the header and the CRCs, never a network, so a corrupt file fails in
microseconds with a BitstreamError; every length is checked against the bytes actually present
before anything is allocated from it. ``read_file`` reads the header from a file's first
``MAX_HEADER_BYTES`` and then exactly the payload it declares, so /dev/zero, /dev/urandom or a file
larger than its header says end in a BitstreamError, not in reading without end. (What a header
claims is checked against the model and the pixel limit by ``Codec.check_header``.)

The digests are 8 bytes, not full hashes: they guard against decoding with the wrong model or on
the wrong backend by accident, not against forgery, and every header byte costs rate on small images.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from hpcm.errors import BitstreamError

MAGIC = b"HPCM"
FORMAT_VERSION = 3  # 2: third stream, the boundary guard; 3: independent substreams per step
READABLE_VERSIONS = (2, 3)
MAX_NAME = 64
MAX_STREAMS = 8
MAX_SIDE = 1 << 16
DIGEST_BYTES = 8
# the longest header: magic, version, name, three digests, size and padding, count, stream table, CRC
MAX_HEADER_BYTES = 4 + 1 + 1 + MAX_NAME + 3 * DIGEST_BYTES + 12 + 1 + 8 * MAX_STREAMS + 4


@dataclass(frozen=True)
class Header:
    variant: str
    weights_digest: bytes
    tables_digest: bytes
    backend_digest: bytes
    height: int
    width: int
    pad_bottom: int
    pad_right: int
    version: int = FORMAT_VERSION


def _name(field: str, value: str) -> bytes:
    raw = value.encode("ascii")
    if len(raw) > MAX_NAME:
        raise ValueError(f"{field} longer than {MAX_NAME} bytes: {value!r}")
    return bytes([len(raw)]) + raw


def pack(header: Header, streams: list[bytes]) -> bytes:
    """Serialise a header and its streams (in the current format only)."""
    if header.version != FORMAT_VERSION:
        raise ValueError(f"streams are written in format {FORMAT_VERSION} only, not {header.version}")
    if not 0 < header.height <= MAX_SIDE or not 0 < header.width <= MAX_SIDE:
        raise ValueError(f"image sides must be in 1..{MAX_SIDE}")
    if not 0 <= header.pad_bottom < 1 << 16 or not 0 <= header.pad_right < 1 << 16:
        raise ValueError("padding out of range")
    digests = (header.weights_digest, header.tables_digest, header.backend_digest)
    if any(len(d) != DIGEST_BYTES for d in digests):
        raise ValueError(f"digests must be {DIGEST_BYTES} bytes")
    if not 0 < len(streams) <= MAX_STREAMS:
        raise ValueError(f"1..{MAX_STREAMS} streams")
    head = bytearray(MAGIC)
    head.append(FORMAT_VERSION)
    head += _name("variant", header.variant)
    head += b"".join(digests)
    head += struct.pack("<IIHH", header.height, header.width, header.pad_bottom, header.pad_right)
    head.append(len(streams))
    for s in streams:
        head += struct.pack("<II", len(s), zlib.crc32(s))
    head += struct.pack("<I", zlib.crc32(bytes(head)))
    return bytes(head) + b"".join(streams)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise BitstreamError(f"bitstream truncated inside the header ({what})")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def name(self, what: str) -> str:
        n = self.take(1, what)[0]
        if n > MAX_NAME:
            raise BitstreamError(f"{what} field too long ({n} bytes)")
        raw = self.take(n, what)
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError as err:
            raise BitstreamError(f"{what} field is not ASCII") from err
        if not text.isprintable():
            raise BitstreamError(f"{what} field has control characters")
        return text


@dataclass(frozen=True)
class Layout:
    """Where a parsed header says the payload lies: header length and each stream's (length, CRC)."""

    header_bytes: int
    streams: tuple[tuple[int, int], ...]

    @property
    def total_bytes(self) -> int:
        return self.header_bytes + sum(length for length, _ in self.streams)


def parse_header(data: bytes) -> tuple[Header, Layout]:
    """Parse and CRC-check the header at the start of ``data`` (the payload need not be there)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BitstreamError("bitstream must be bytes")
    r = _Reader(bytes(data[:MAX_HEADER_BYTES]))
    if r.take(4, "magic") != MAGIC:
        raise BitstreamError("not an HPCM bitstream (bad magic)")
    version = r.take(1, "version")[0]
    if version not in READABLE_VERSIONS:
        raise BitstreamError(f"unsupported bitstream format version {version} (this decoder reads "
                             f"{', '.join(map(str, READABLE_VERSIONS))})")
    variant = r.name("variant")
    weights_digest = r.take(DIGEST_BYTES, "weights digest")
    tables_digest = r.take(DIGEST_BYTES, "tables digest")
    backend_digest = r.take(DIGEST_BYTES, "backend digest")
    height, width, pad_bottom, pad_right = struct.unpack("<IIHH", r.take(12, "image size"))
    count = r.take(1, "stream count")[0]
    if not 0 < count <= MAX_STREAMS:
        raise BitstreamError(f"invalid stream count {count}")
    entries = tuple(struct.unpack("<II", r.take(8, "stream table")) for _ in range(count))
    (crc,) = struct.unpack("<I", r.take(4, "header CRC"))
    if zlib.crc32(r.data[: r.pos - 4]) != crc:
        raise BitstreamError("header CRC mismatch: the header is corrupt")
    # checked after the CRC so that a corrupt field reports as corruption, not as a bad value
    if not 0 < height <= MAX_SIDE or not 0 < width <= MAX_SIDE:
        raise BitstreamError(f"image size {width}x{height} out of range")
    header = Header(variant, weights_digest, tables_digest, backend_digest, height, width, pad_bottom, pad_right,
                    version)
    return header, Layout(r.pos, entries)


@dataclass(frozen=True)
class Bitstream:
    """A bitstream parsed and CRC-checked once (``parse``, ``read_file``): its header, its streams, and
    its size in bytes. ``Codec.decompress`` takes it as it is, so a decoder reads each header once."""

    header: Header
    streams: list[bytes]
    size: int


def _verified_streams(data: bytes, layout: Layout) -> list[bytes]:
    """The streams of ``data`` that ``layout`` describes, each checked against its CRC."""
    streams = []
    pos = layout.header_bytes
    for i, (length, stream_crc) in enumerate(layout.streams):
        s = data[pos:pos + length]
        if zlib.crc32(s) != stream_crc:
            raise BitstreamError(f"stream {i} CRC mismatch: the payload is corrupt")
        streams.append(s)
        pos += length
    return streams


def parse(data: bytes) -> Bitstream:
    """Parse and verify a bitstream; raises BitstreamError on any inconsistency."""
    header, layout = parse_header(data)
    data = bytes(data)
    if layout.total_bytes != len(data):
        raise BitstreamError(f"bitstream is {len(data)} bytes but its header describes {layout.total_bytes}: "
                             "truncated or extended")
    return Bitstream(header, _verified_streams(data, layout), len(data))


def unpack(data: bytes) -> tuple[Header, list[bytes]]:
    """The header and streams of a bitstream (``parse``)."""
    parsed = parse(data)
    return parsed.header, parsed.streams


def read_file(path: Union[str, Path]) -> Bitstream:
    """A bitstream file, read bounded and parsed once: the header from the first bytes, then exactly the
    payload it declares (compared with a regular file's size before reading). A device or pipe is read
    no further than that, so /dev/zero or an endless pipe cannot grow memory. Errors name ``path``."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            start = f.read(MAX_HEADER_BYTES)
            try:
                header, layout = parse_header(start)
            except BitstreamError as exc:
                raise BitstreamError(f"{path}: {exc}") from exc
            size = os.fstat(f.fileno()).st_size if stat.S_ISREG(os.fstat(f.fileno()).st_mode) else None
            if size is not None and size != layout.total_bytes:
                raise BitstreamError(f"{path}: the file is {size} bytes but its header describes "
                                     f"{layout.total_bytes}: truncated or extended")
            rest = f.read(max(0, layout.total_bytes - len(start)) + 1)
    except FileNotFoundError as exc:
        raise BitstreamError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise BitstreamError(f"{path}: is a folder, not a bitstream") from exc
    except OSError as exc:
        raise BitstreamError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    data = start + rest
    if len(data) != layout.total_bytes:
        raise BitstreamError(f"{path}: {'extended' if len(data) > layout.total_bytes else 'truncated'}: its header "
                             f"describes {layout.total_bytes} bytes")
    try:
        return Bitstream(header, _verified_streams(data, layout), len(data))
    except BitstreamError as exc:
        raise BitstreamError(f"{path}: {exc}") from exc
