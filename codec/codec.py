"""Image codec: HPCM's networks on a graph runner, the rANS coder and the .hpcm container.

A ``Codec`` is built from two things (``hpcm.runtime.session.open_codec`` builds them from a
checkpoint, an export folder or a model):

* a runner: anything that runs the graphs of ``hpcm.models.graphs`` by name and says on which
  device and with what (``run``, ``device``, ``fingerprint``): eager PyTorch, ONNX Runtime, TensorRT;
* ``CodecParameters``: everything else the codec needs (variant, latent sizes, alignment, the z
  means, the entropy tables, the weights digest), from a model or from an export folder.

Streams: 0 = z (per-channel tables ``*_z``, row = channel), 1 = y (tables ``*_y``, row = scale
bucket), coded through the 11 progressive steps in order (``ProgressiveSchedule.run``), 2 = boundary
guard (``guard.py``: the buckets of scales that lie too close to a bucket boundary to trust another
backend with). In format 3 each step's symbols are independent substreams (``entropy.py``): the
encoder codes z and each step k on worker threads while the networks after them run, and both sides
code a step's substreams in parallel; format 2 streams (one rANS stream for all steps) still decode.

Images of any size are padded at the bottom and right by edge replication (``replicate``) up to the
alignment; replication keeps the border free of the artificial edges that zero padding would cost
bits for. The decoder crops the padding off again.

Determinism: the decoder must compute the same scale bucket for every symbol as the encoder did.
The entropy parameters are computed in float32 with TF32 disabled; the runner's fingerprint is
recorded in the bitstream and a decoder on a different one warns, because a different device or
library rounds differently and can flip bucket indexes (one in 491,520 on kodim01 between ONNX
Runtime and eager PyTorch); the boundary guard makes the flips a decoder within its tolerance could
make harmless. The stream CRCs and the rANS end-state check turn
any remaining desynchronisation into an error instead of a silently wrong image.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from hpcm import config
from hpcm.errors import BitstreamError, CodingError, EntropyTableError, ImageError
from hpcm.models.cdf_tables import TABLE_NAMES
from hpcm.models.graphs import Y_STRIDE, Z_STRIDE, GraphNetworks
from hpcm.models.layout import ScaleLayout
from hpcm.models.progressive import NO_CLOCK, ProgressiveSchedule, StageClock

from . import bitstream
from .entropy import LegacyStreamDecoder, StreamDecoder, StreamEncoder
from .guard import DEFAULT_EPSILON, GuardReader, GuardWriter
from .images import check_pixel_count
from .rans import MAX_ABS_VALUE, SymbolRangeError
from .tables import EntropyTables, tensor_digest

PAD_MODE = "replicate"
# Slack (bits) on the bound "symbols x cheapest symbol cost <= stream bits" used to reject
# headers that claim more symbols than their streams could hold.
_SIZE_BOUND_SLACK_BITS = 256


class BackendMismatchWarning(RuntimeWarning):
    """The bitstream's entropy parameters were computed on a different backend or precision."""


class Runner(Protocol):
    """What the codec needs of a graph runner (``hpcm.runtime.runners``)."""

    device: torch.device
    fingerprint: str

    def run(self, graph: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


def weights_digest(model: torch.nn.Module) -> bytes:
    """SHA-256 prefix over the model's state_dict without the entropy tables (they have their own)."""
    return tensor_digest([(k, v) for k, v in sorted(model.state_dict().items()) if k not in TABLE_NAMES])


def backend_digest(fingerprint: str) -> bytes:
    """The bitstream's short form of a runner fingerprint."""
    return hashlib.sha256(fingerprint.encode()).digest()[: bitstream.DIGEST_BYTES]


@dataclass(frozen=True)
class CodecParameters:
    """Everything the codec needs besides the networks."""

    variant: str
    M: int
    N: int
    alignment: int
    means_hyper: torch.Tensor  # (1, N, 1, 1): z is coded as round(z - means_hyper)
    tables: EntropyTables
    weights_digest: bytes

    def __post_init__(self) -> None:
        source = self.tables.source
        if self.tables.z.count != self.N:
            raise EntropyTableError(f"{source}: {self.tables.z.count} z CDF rows for N = {self.N} channels")
        if tuple(self.means_hyper.shape) != (1, self.N, 1, 1) or not torch.isfinite(self.means_hyper).all():
            raise EntropyTableError(f"{source}: means_hyper must be finite of shape (1, {self.N}, 1, 1)")

    @classmethod
    def from_model(cls, model: torch.nn.Module, source: str | None = None) -> "CodecParameters":
        """From an ``HPCM`` with entropy tables (``model.update()`` computes them once); ``source`` names
        where the model came from in error messages (a checkpoint's path)."""
        return cls(variant=model.spec.name, M=int(model.M), N=int(model.N), alignment=int(model.alignment),
                   means_hyper=model.means_hyper.detach().float().cpu().clone(),
                   tables=EntropyTables.from_model(model, source), weights_digest=weights_digest(model))


@dataclass
class EncodeResult:
    data: bytes
    y_hat: torch.Tensor
    z_hat: torch.Tensor
    padded: torch.Tensor


@dataclass
class DecodeResult:
    x_hat: torch.Tensor
    y_hat: torch.Tensor
    z_hat: torch.Tensor
    header: bitstream.Header


@contextlib.contextmanager
def deterministic_precision(device: torch.device) -> Iterator[None]:
    """float32 without TF32 on CUDA, restored afterwards; a no-op elsewhere."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


def pad_image(x: torch.Tensor, alignment: int) -> tuple[torch.Tensor, int, int]:
    """Replicate-pad bottom/right to multiples of ``alignment``; returns (padded, pad_bottom, pad_right)."""
    h, w = x.shape[-2:]
    pad_b, pad_r = (-h) % alignment, (-w) % alignment
    if pad_b or pad_r:
        x = F.pad(x, (0, pad_r, 0, pad_b), mode=PAD_MODE)
    return x, pad_b, pad_r


def padded_size(height: int, width: int, alignment: int) -> tuple[int, int]:
    """The size the networks process: each side padded up to a multiple of ``alignment``."""
    return height + (-height) % alignment, width + (-width) % alignment


def _check_image(x: torch.Tensor, alignment: int, max_pixels: int | None) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ImageError(f"expected an image tensor of shape (1, 3, H, W), got {getattr(x, 'shape', type(x))}")
    height, width = int(x.shape[2]), int(x.shape[3])
    if not 0 < height <= bitstream.MAX_SIDE or not 0 < width <= bitstream.MAX_SIDE:
        raise ImageError(f"image sides must be in 1..{bitstream.MAX_SIDE}")
    check_pixel_count("the image", height, width, max_pixels, padded_size(height, width, alignment))
    if not torch.isfinite(x).all():
        raise ImageError("image has non-finite values")


# what torch's CPU allocator and CUDA say when an allocation fails (RuntimeError or OutOfMemoryError)
_ALLOCATION_FAILURES = ("can't allocate memory", "out of memory")


@contextlib.contextmanager
def memory_for(height: int, width: int) -> Iterator[None]:
    """Report a failed allocation while coding a ``height`` x ``width`` (padded) image as a CodingError
    saying what to do, instead of the allocator's traceback."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and not any(text in str(exc) for text in _ALLOCATION_FAILURES):
            raise
        raise CodingError(f"not enough memory to run the networks at {width}x{height} ({height * width:,} pixels "
                          "after padding): free memory, or lower --max-pixels (HPCM_MAX_PIXELS) to refuse such "
                          "images up front") from exc


def check_claimed_size(header: bitstream.Header, max_pixels: int | None = None) -> None:
    """Refuse a stream whose image, with the padding its header claims, is above the pixel limit: the
    first check of a header, which needs no model (a decoder makes it before loading one)."""
    padded = (header.height + header.pad_bottom, header.width + header.pad_right)
    check_pixel_count("the stream's image", header.height, header.width, max_pixels, padded)


def _z_indexes(shape: torch.Size) -> torch.Tensor:
    """z is coded with one table row per channel."""
    channels = shape[1]
    return torch.arange(channels, dtype=torch.int32).view(1, channels, 1, 1).expand(shape)


_UNCODABLE = (f"the networks produced latents that are not numbers or lie beyond +-{MAX_ABS_VALUE} (broken weights "
              "or backend); cannot code them")


def _round_symbols(residual: torch.Tensor) -> torch.Tensor:
    """The symbols of ``residual``; the coder's rule, for symbols that are not coded at once (z, ``latents``):
    a value that is not a number or lies beyond +-MAX_ABS_VALUE is refused."""
    q = torch.round(residual)
    if not bool((q.abs() <= MAX_ABS_VALUE).all()):  # False for NaN
        raise CodingError(_UNCODABLE)
    return q


def _step_symbols(y_block: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """The encoder's symbols of a step: its y block (``ProgressiveSchedule.symbol_blocks``) minus
    ``means``, rounded, in place of the block. The coder refuses a symbol it cannot code (not a number,
    beyond +-MAX_ABS_VALUE: SymbolRangeError) when it codes it."""
    if y_block.device.type == "cpu" and means.is_contiguous() and means.dtype == y_block.dtype:
        # numpy's two passes run on this thread: torch's would wake the OpenMP team for a step's few
        # thousand values while the coder's worker has the other core
        block = y_block.numpy()
        np.rint(np.subtract(block, means.numpy(), out=block), out=block)
        return y_block
    return torch.sub(y_block, means, out=y_block).round_()


class Codec:
    """compress / decompress with ``runner``'s networks and ``parameters``' tables.

    ``clock`` sees the stages of each call: ``analysis``, ``hyper`` (hyper synthesis),
    ``entropy_coding`` (rANS, guard, container), ``synthesis``, and the schedule's ``s1``..``s3`` and
    transitions (``ProgressiveSchedule``); ``hpcm bench`` passes one that times them."""

    def __init__(self, runner: Runner, parameters: CodecParameters, max_pixels: int | None = None,
                 clock: StageClock = NO_CLOCK) -> None:
        self.runner = runner
        self.parameters = parameters
        self.max_pixels = max_pixels  # None: the configured limit (hpcm.config.max_pixels)
        self.device = torch.device(runner.device)
        self.networks = GraphNetworks(runner)
        self.clock = clock
        self.schedule = ProgressiveSchedule(ScaleLayout(parameters.M), self.networks, clock)
        self.means_hyper = parameters.means_hyper.to(self.device)

    @property
    def variant(self) -> str:
        return self.parameters.variant

    @property
    def alignment(self) -> int:
        return self.parameters.alignment

    @property
    def fingerprint(self) -> str:
        return self.runner.fingerprint

    # ------------------------------------------------------------------ latents
    def _analyse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
        """(padded x, y, z residual symbols, z_hat, pad_bottom, pad_right) of an image in [0, 1]."""
        _check_image(x, self.alignment, self.max_pixels)
        xp, pad_b, pad_r = pad_image(x.to(device=self.device, dtype=torch.float32).clamp(0.0, 1.0), self.alignment)
        y, z = self.networks.analyse(xp)
        if not bool(torch.isfinite(y).all()):  # refused before the steps' networks run on it
            raise CodingError(_UNCODABLE)
        z_q = _round_symbols(z - self.means_hyper)
        return xp, y, z_q, z_q + self.means_hyper, pad_b, pad_r

    def latents(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The encoder's z_hat and per-step symbols for ``x``, without entropy coding."""
        symbols: list[torch.Tensor] = []
        with torch.no_grad(), deterministic_precision(self.device):
            _, y, _, z_hat, _, _ = self._analyse(x)
            y_scales = self.schedule.all_scales(y)

            def record(step: int, scales: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
                symbols.append(_round_symbols(self.schedule.symbols(y_scales, step) - means))
                return symbols[-1]

            self.schedule.run(self.networks.h_s(z_hat), record)
        return z_hat, symbols

    def entropy_parameters(self, z_hat: torch.Tensor, symbols: list[torch.Tensor]
                           ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(scales, means) of every step as a decoder that decoded ``symbols`` computes them."""
        out: list[tuple[torch.Tensor, torch.Tensor]] = []
        with torch.no_grad(), deterministic_precision(self.device):

            def given(step: int, scales: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
                out.append((scales, means))
                return symbols[step].to(device=means.device, dtype=means.dtype)

            self.schedule.run(self.networks.h_s(z_hat.to(self.device)), given)
        return out

    # ------------------------------------------------------------------ coding
    def compress(self, x: torch.Tensor, guard_epsilon: float = DEFAULT_EPSILON) -> EncodeResult:
        """Encode an image ``x`` in [0, 1] of shape (1, 3, H, W), any H and W whose padded size is
        within the pixel limit (``max_pixels``).

        ``guard_epsilon``: relative scale error a decoder on another backend may have and still
        decode (0 disables the guard stream's positions: same-backend decoding only)."""
        tables, section = self.parameters.tables, self.clock.section
        height, width = x.shape[-2:]
        threads = config.coder_threads()
        with torch.no_grad(), deterministic_precision(self.device), \
                memory_for(*padded_size(int(height), int(width), self.alignment)), \
                StreamEncoder(tables.z, threads=threads, overlap=True, clock=self.clock) as z_coder, \
                StreamEncoder(tables.y, tables.buckets, GuardWriter(guard_epsilon, tables.scale_table),
                              threads=threads, overlap=True, clock=self.clock) as y_coder:
            with section("analysis"):
                xp, y, z_q, z_hat, pad_b, pad_r = self._analyse(x)
            if z_q.shape[1] != tables.z.count:
                raise CodingError(f"z has {z_q.shape[1]} channels but there are {tables.z.count} z tables")
            with section("entropy_coding"):
                z_coder.add(z_q, indexes=_z_indexes(z_q.shape))  # coded beside the hyper synthesis
            with section("entropy_coding"):
                y_blocks = self.schedule.symbol_blocks(y)

            def encode_step(step: int, scales: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
                with section("entropy_coding"):
                    q = _step_symbols(y_blocks[step], means)
                    y_coder.add(q, scales=scales, last=step == len(self.schedule.steps) - 1)
                return q

            with section("hyper"):
                params = self.networks.h_s(z_hat)
            try:
                y_hat = self.schedule.run(params, encode_step)
                with section("entropy_coding"):
                    streams = [z_coder.finish(), y_coder.finish(), y_coder.guard.flush()]
            except SymbolRangeError as exc:
                raise CodingError(_UNCODABLE) from exc
        with section("entropy_coding"):
            header = bitstream.Header(
                variant=self.variant,
                weights_digest=self.parameters.weights_digest,
                tables_digest=tables.digest,
                backend_digest=backend_digest(self.fingerprint),
                height=int(height), width=int(width), pad_bottom=pad_b, pad_right=pad_r,
            )
            data = bitstream.pack(header, streams)
        return EncodeResult(data=data, y_hat=y_hat, z_hat=z_hat, padded=xp)

    def synthesise(self, y_hat: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The image of ``y_hat`` (padded latents), clamped to [0, 1] and cropped to ``height`` x ``width``:
        the decoder's last stage, and the encoder's own reconstruction when given its ``y_hat``."""
        padded = (y_hat.shape[-2] * Y_STRIDE, y_hat.shape[-1] * Y_STRIDE)
        with torch.no_grad(), deterministic_precision(self.device), self.clock.section("synthesis"), \
                memory_for(*padded):
            return self.networks.g_s(y_hat).clamp(0.0, 1.0)[..., :height, :width]

    def check_header(self, header: bitstream.Header, streams: list[bytes]) -> None:
        """Everything about a parsed bitstream that can be checked before a network runs: it belongs to
        this model, its padding fits the alignment, the networks' size is within the pixel limit, and
        its streams are long enough for the symbols it claims (a weak bound: a flat image codes a
        symbol in a fraction of a bit, so the pixel limit is what bounds the decoder's memory)."""
        params, tables = self.parameters, self.parameters.tables
        if header.variant != params.variant:
            raise BitstreamError(f"bitstream was encoded with variant {header.variant!r}, the model is "
                                 f"{params.variant!r}")
        if header.weights_digest != params.weights_digest:
            raise BitstreamError("bitstream was encoded with different model weights "
                                 f"(weights digest {header.weights_digest.hex()} != {params.weights_digest.hex()}); "
                                 "decode with the checkpoint or export that encoded it")
        if header.tables_digest != tables.digest:
            # the weights matched above, so the tables were computed or stored differently
            raise BitstreamError(f"bitstream's entropy tables (digest {header.tables_digest.hex()}) differ from those "
                                 f"of {tables.source} ({tables.digest.hex()}) although the weights are the same: "
                                 "the encoder computed its tables another way (hpcm-rwkv before 0.2 computed tables "
                                 "without stored ones differently on different CPUs: re-encode the image), "
                                 f"or the tables stored in {tables.source} or in the encoder's checkpoint or export "
                                 "were altered")
        if len(streams) != 3:
            raise BitstreamError(f"expected 3 streams (z, y, guard), found {len(streams)}")
        align = params.alignment
        ph, pw = header.height + header.pad_bottom, header.width + header.pad_right
        if header.pad_bottom >= align or header.pad_right >= align or ph % align or pw % align:
            raise BitstreamError(f"padding {header.pad_bottom}/{header.pad_right} is inconsistent with the "
                                 f"model's alignment {align}")
        check_claimed_size(header, self.max_pixels)
        z_count = tables.z.count * (ph // Z_STRIDE) * (pw // Z_STRIDE)
        y_count = params.M * (ph // Y_STRIDE) * (pw // Y_STRIDE)
        for name, count, min_bits, stream in (("z", z_count, tables.min_bits_z, streams[0]),
                                              ("y", y_count, tables.min_bits_y, streams[1])):
            if count * min_bits > 8 * len(stream) + _SIZE_BOUND_SLACK_BITS:
                raise BitstreamError(f"the {name} stream ({len(stream)} bytes) is too short for a "
                                     f"{header.width}x{header.height} image")

    def _stream_decoders(self, header: bitstream.Header, streams: list[bytes]
                         ) -> tuple[StreamDecoder | LegacyStreamDecoder, StreamDecoder | LegacyStreamDecoder]:
        """Decoders of the z and y streams in the stream's format (the y one with the guard)."""
        tables = self.parameters.tables
        guard = GuardReader(streams[2], tables.scale_table, steps=len(self.schedule.steps))
        if header.version == 2:
            return (LegacyStreamDecoder(streams[0], tables.z, tables.buckets),
                    LegacyStreamDecoder(streams[1], tables.y, tables.buckets, guard))
        threads = config.coder_threads()
        return (StreamDecoder(streams[0], tables.z, tables.buckets, threads=threads),
                StreamDecoder(streams[1], tables.y, tables.buckets, guard, threads=threads))

    def decompress(self, data: bytes | bitstream.Bitstream) -> DecodeResult:
        """Decode a bitstream (its bytes, or as ``bitstream.parse``/``read_file`` parsed it: a header is
        parsed once); ``x_hat`` is the image in [0, 1] of shape (1, 3, H, W)."""
        section = self.clock.section
        with section("entropy_coding"):
            parsed = data if isinstance(data, bitstream.Bitstream) else bitstream.parse(data)
            header, streams = parsed.header, parsed.streams
            self.check_header(header, streams)
        if header.backend_digest != backend_digest(self.fingerprint):
            warnings.warn(f"the bitstream's entropy parameters were computed on another backend or precision "
                          f"(fingerprint {header.backend_digest.hex()}) than this decoder's "
                          f"{self.fingerprint!r}: scale buckets may differ, so decoding may fail",
                          BackendMismatchWarning, stacklevel=2)
        tables = self.parameters.tables
        ph, pw = header.height + header.pad_bottom, header.width + header.pad_right
        with torch.no_grad(), deterministic_precision(self.device), memory_for(ph, pw):
            with section("entropy_coding"):
                z_dec, y_dec = self._stream_decoders(header, streams)
                z_shape = torch.Size((1, tables.z.count, ph // Z_STRIDE, pw // Z_STRIDE))
                z_q = z_dec.decode(z_shape, indexes=_z_indexes(z_shape))
                z_dec.finish()
                z_hat = z_q.to(device=self.device, dtype=torch.float32) + self.means_hyper

            def decode_step(step: int, scales: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
                with section("entropy_coding"):
                    return y_dec.decode(scales.shape, scales=scales).to(device=means.device, dtype=means.dtype)

            with section("hyper"):
                params = self.networks.h_s(z_hat)
            y_hat = self.schedule.run(params, decode_step)
            with section("entropy_coding"):
                y_dec.finish()
            x_hat = self.synthesise(y_hat, header.height, header.width)
        return DecodeResult(x_hat=x_hat, y_hat=y_hat, z_hat=z_hat, header=header)


def inspect(data: bytes) -> bitstream.Header:
    """Parse and CRC-check a bitstream without a model."""
    return bitstream.unpack(data)[0]

