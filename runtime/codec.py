"""Image codec: an HPCM model plus the rANS coder and the .hpcm container.

Streams: 0 = z (per-channel tables ``*_z``, row = channel), 1 = y (tables ``*_y``, row = scale
bucket), coded through the model's 11 progressive steps in order, 2 = boundary guard (``guard.py``:
the buckets of scales that lie too close to a bucket boundary to trust another backend with).

Images of any size are padded at the bottom and right by edge replication (``replicate``) up to
``model.alignment``; replication keeps the border free of the artificial edges that zero padding
would cost bits for. The decoder crops the padding off again.

Determinism: the decoder must compute the same scale bucket for every symbol as the encoder did.
The entropy parameters are computed in float32 with TF32 disabled; the backend and precision are
recorded in the bitstream and a decoder on a different backend warns, because a different device
or library can flip bucket indexes (see ``design/codec.md``). The stream CRCs and the rANS
end-state check turn such a desynchronisation into an error instead of a silently wrong image
whenever it makes the decoder run off its stream.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import warnings
import weakref
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from hpcm.models.cdf_tables import scale_indexes

from . import bitstream
from .errors import BitstreamError
from .guard import DEFAULT_EPSILON, GuardReader, GuardWriter
from .rans import MAX_ABS_VALUE, CdfTables, RansDecoder, RansEncoder

TABLE_BUFFERS = ("scale_table", "quantized_cdf_y", "cdf_length_y", "offset_y",
                 "quantized_cdf_z", "cdf_length_z", "offset_z")
PAD_MODE = "replicate"
# HPCM's latent strides (fixed by the architecture, not by the variant).
Y_STRIDE, Z_STRIDE = 16, 64
# Slack (bits) on the bound "symbols x cheapest symbol cost <= stream bits" used to reject
# headers that claim more symbols than their streams could hold.
_SIZE_BOUND_SLACK_BITS = 256


class BackendMismatchWarning(RuntimeWarning):
    """The bitstream's entropy parameters were computed on a different backend or precision."""


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


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


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


def backend_fingerprint(device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """What computes the entropy parameters: library, device model and precision."""
    precision = str(dtype).replace("torch.", "")
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = torch.cuda.get_device_name(index).replace(" ", "_")
        return (f"torch-{torch.__version__}/cuda-{torch.version.cuda}/cudnn-{torch.backends.cudnn.version()}/"
                f"{name}/{precision}/tf32-off")
    return f"torch-{torch.__version__}/{device.type}/{precision}"


def model_fingerprint(model: torch.nn.Module) -> str:
    """The fingerprint of whatever computes ``model``'s entropy parameters: a graph backend's own
    (``GraphModel.backend_fingerprint``) or eager PyTorch on the model's device."""
    return getattr(model, "backend_fingerprint", None) or backend_fingerprint(_model_device(model))


def backend_digest(fingerprint: str) -> bytes:
    """The bitstream's short form of a backend fingerprint."""
    return hashlib.sha256(fingerprint.encode()).digest()[: bitstream.DIGEST_BYTES]


def _versions(tensors: list[torch.Tensor]) -> tuple:
    return tuple((t.data_ptr(), t._version, tuple(t.shape), t.dtype) for t in tensors)


_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def _digest(items: list[tuple[str, torch.Tensor]]) -> bytes:
    h = hashlib.sha256()
    for name, t in items:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()[: bitstream.DIGEST_BYTES]


def _cached(model: torch.nn.Module, key: str, tensors: list[torch.Tensor], compute):  # noqa: ANN001, ANN202
    """Memoise per model, invalidated when any tensor is replaced or modified in place."""
    store = _CACHE.setdefault(model, {})
    version = _versions(tensors)
    hit = store.get(key)
    if hit is not None and hit[0] == version:
        return hit[1]
    value = compute()
    store[key] = (version, value)
    return value


def _table_items(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    items = []
    for name in TABLE_BUFFERS:
        t = getattr(model, name, None)
        if t is None or not isinstance(t, torch.Tensor) or t.numel() == 0:
            raise RuntimeError(f"model buffer {name!r} is empty: call model.update() before coding")
        items.append((name, t))
    return items


def weights_digest(model: torch.nn.Module) -> bytes:
    """SHA-256 prefix over the model's state_dict without the CDF tables (they have their own)."""
    items = [(k, v) for k, v in sorted(model.state_dict().items()) if k not in TABLE_BUFFERS]
    return _cached(model, "weights", [v for _, v in items], lambda: _digest(items))


def tables_digest(model: torch.nn.Module) -> bytes:
    items = _table_items(model)
    return _cached(model, "tables", [v for _, v in items], lambda: _digest(items))


def _coder_tables(model: torch.nn.Module) -> tuple[CdfTables, CdfTables]:
    items = dict(_table_items(model))

    def build() -> tuple[CdfTables, CdfTables]:
        y = CdfTables(items["quantized_cdf_y"], items["cdf_length_y"], items["offset_y"])
        z = CdfTables(items["quantized_cdf_z"], items["cdf_length_z"], items["offset_z"])
        return y, z

    return _cached(model, "coder_tables", list(items.values()), build)


def _min_symbol_bits(tables: CdfTables) -> float:
    """Cost in bits of the most probable symbol of any row: a lower bound on every symbol."""
    largest = max(int((tables.cdf[i, 1: tables.length[i]] - tables.cdf[i, : tables.length[i] - 1]).max())
                  for i in range(tables.count))
    return -math.log2(largest / 65536.0)


def _check_image(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"expected an image tensor of shape (1, 3, H, W), got {getattr(x, 'shape', type(x))}")
    if not 0 < x.shape[2] <= bitstream.MAX_SIDE or not 0 < x.shape[3] <= bitstream.MAX_SIDE:
        raise ValueError(f"image sides must be in 1..{bitstream.MAX_SIDE}")
    if not torch.isfinite(x).all():
        raise ValueError("image has non-finite values")


def pad_image(x: torch.Tensor, alignment: int) -> tuple[torch.Tensor, int, int]:
    """Replicate-pad bottom/right to multiples of ``alignment``; returns (padded, pad_bottom, pad_right)."""
    h, w = x.shape[-2:]
    pad_b, pad_r = (-h) % alignment, (-w) % alignment
    if pad_b or pad_r:
        x = F.pad(x, (0, pad_r, 0, pad_b), mode=PAD_MODE)
    return x, pad_b, pad_r


def _z_indexes(shape: torch.Size) -> torch.Tensor:
    """z is coded with one table row per channel."""
    channels = shape[1]
    return torch.arange(channels, dtype=torch.int32).view(1, channels, 1, 1).expand(shape)


def _round_symbols(residual: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(residual).all():
        raise ValueError("the model produced non-finite latents; cannot code them")
    return torch.round(residual).clamp(-MAX_ABS_VALUE, MAX_ABS_VALUE)


def compress_with_state(model: torch.nn.Module, x: torch.Tensor, guard_epsilon: float = DEFAULT_EPSILON) -> EncodeResult:
    """Encode and keep the encoder's y_hat / z_hat (what a decoder must reproduce exactly)."""
    _check_image(x)
    device = _model_device(model)
    y_tables, z_tables = _coder_tables(model)
    table = model.scale_table
    height, width = x.shape[-2:]
    with torch.no_grad(), deterministic_precision(device):
        xp, pad_b, pad_r = pad_image(x.to(device=device, dtype=torch.float32).clamp(0.0, 1.0), model.alignment)
        y, z = model.analyse(xp)
        z_q = _round_symbols(z - model.means_hyper)
        z_hat = z_q + model.means_hyper
        if z_q.shape[1] != z_tables.count:
            raise RuntimeError(f"z has {z_q.shape[1]} channels but the model has {z_tables.count} z tables")
        z_enc = RansEncoder(z_tables)
        z_enc.encode(z_q, _z_indexes(z_q.shape))
        params = model.h_s(z_hat)
        y_enc = RansEncoder(y_tables)
        guard = GuardWriter(guard_epsilon)
        state = model.begin_progressive(params)
        for step in range(model.num_steps):
            scales, means = model.step_parameters(state, step)
            q = _round_symbols(model.step_symbols(y, step) - means)
            guard.add_step(scales, table)
            y_enc.encode(q, scale_indexes(scales, table))
            state = model.advance(state, step, q + means)
        y_hat = model.finish_progressive(state)
    header = bitstream.Header(
        variant=model.spec.name,
        weights_digest=weights_digest(model),
        tables_digest=tables_digest(model),
        backend_digest=backend_digest(model_fingerprint(model)),
        height=int(height), width=int(width), pad_bottom=pad_b, pad_right=pad_r,
    )
    data = bitstream.pack(header, [z_enc.flush(), y_enc.flush(), guard.flush()])
    return EncodeResult(data=data, y_hat=y_hat, z_hat=z_hat, padded=xp)


def compress(model: torch.nn.Module, x: torch.Tensor, guard_epsilon: float = DEFAULT_EPSILON) -> bytes:
    """Encode an image ``x`` in [0, 1] of shape (1, 3, H, W), any H and W.

    ``guard_epsilon``: relative scale error a decoder on another backend may have and still decode
    (0 disables the guard stream's positions: same-backend decoding only)."""
    return compress_with_state(model, x, guard_epsilon).data


def inspect(data: bytes) -> bitstream.Header:
    """Parse and CRC-check a bitstream without a model."""
    return bitstream.unpack(data)[0]


def _validate_for_model(model: torch.nn.Module, header: bitstream.Header, streams: list[bytes]) -> None:
    """Everything that can be checked before a network runs."""
    variant = model.spec.name
    if header.variant != variant:
        raise BitstreamError(f"bitstream was encoded with variant {header.variant!r}, the model is {variant!r}")
    if header.weights_digest != weights_digest(model):
        raise BitstreamError("bitstream was encoded with different model weights "
                             f"(weights digest {header.weights_digest.hex()} != {weights_digest(model).hex()}); "
                             "decode with the checkpoint that encoded it")
    if header.tables_digest != tables_digest(model):
        raise BitstreamError("bitstream was encoded with different CDF tables; decode with the checkpoint "
                             "that encoded it")
    if len(streams) != 3:
        raise BitstreamError(f"expected 3 streams (z, y, guard), found {len(streams)}")
    align = int(model.alignment)
    ph, pw = header.height + header.pad_bottom, header.width + header.pad_right
    if header.pad_bottom >= align or header.pad_right >= align or ph % align or pw % align:
        raise BitstreamError(f"padding {header.pad_bottom}/{header.pad_right} is inconsistent with the "
                             f"model's alignment {align}")
    y_tables, z_tables = _coder_tables(model)
    z_count = z_tables.count * (ph // Z_STRIDE) * (pw // Z_STRIDE)
    y_count = int(model.M) * (ph // Y_STRIDE) * (pw // Y_STRIDE)
    for name, count, tables, stream in (("z", z_count, z_tables, streams[0]), ("y", y_count, y_tables, streams[1])):
        if count * _cached_min_bits(model, name, tables) > 8 * len(stream) + _SIZE_BOUND_SLACK_BITS:
            raise BitstreamError(f"the {name} stream ({len(stream)} bytes) is too short for a "
                                 f"{header.width}x{header.height} image")


def _cached_min_bits(model: torch.nn.Module, name: str, tables: CdfTables) -> float:
    items = _table_items(model)
    return _cached(model, f"min_bits_{name}", [v for _, v in items], lambda: _min_symbol_bits(tables))


def decompress_with_state(model: torch.nn.Module, data: bytes) -> DecodeResult:
    """Decode and also return y_hat / z_hat on the padded grid."""
    header, streams = bitstream.unpack(data)
    _validate_for_model(model, header, streams)
    device = _model_device(model)
    fingerprint = model_fingerprint(model)
    if header.backend_digest != backend_digest(fingerprint):
        warnings.warn(f"the bitstream's entropy parameters were computed on another backend or precision "
                      f"(fingerprint {header.backend_digest.hex()}) than this decoder's "
                      f"{fingerprint!r}: scale buckets may differ, so decoding may fail",
                      BackendMismatchWarning, stacklevel=2)
    y_tables, z_tables = _coder_tables(model)
    table = model.scale_table
    ph, pw = header.height + header.pad_bottom, header.width + header.pad_right
    with torch.no_grad(), deterministic_precision(device):
        z_shape = torch.Size((1, z_tables.count, ph // Z_STRIDE, pw // Z_STRIDE))
        z_dec = RansDecoder(streams[0], z_tables)
        z_q = torch.from_numpy(z_dec.decode(_z_indexes(z_shape))).reshape(z_shape)
        z_dec.finish()
        z_hat = z_q.to(device=device, dtype=torch.float32) + model.means_hyper
        params = model.h_s(z_hat)
        y_dec = RansDecoder(streams[1], y_tables)
        guard = GuardReader(streams[2])
        state = model.begin_progressive(params)
        for step in range(model.num_steps):
            scales, means = model.step_parameters(state, step)
            indexes = guard.apply_step(scale_indexes(scales, table), scales, table)
            q = torch.from_numpy(y_dec.decode(indexes)).reshape(scales.shape)
            state = model.advance(state, step, q.to(device=device, dtype=means.dtype) + means)
        y_dec.finish()
        guard.finish()
        y_hat = model.finish_progressive(state)
        x_hat = model.g_s(y_hat).clamp(0.0, 1.0)[..., : header.height, : header.width]
    return DecodeResult(x_hat=x_hat, y_hat=y_hat, z_hat=z_hat, header=header)


def decompress(model: torch.nn.Module, data: bytes) -> torch.Tensor:
    """Decode a bitstream to an image in [0, 1] of shape (1, 3, H, W)."""
    return decompress_with_state(model, data).x_hat
