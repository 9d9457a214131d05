"""The codec: rANS entropy coder, boundary guard, .hpcm container, and compress/decompress over a
graph runner (``Codec``). It depends on the models layer only, never on export or runtime."""

from .codec import BackendMismatchWarning, Codec, CodecParameters, DecodeResult, EncodeResult, inspect, pad_image
from .tables import EntropyTables

__all__ = ["BackendMismatchWarning", "Codec", "CodecParameters", "DecodeResult", "EncodeResult", "EntropyTables",
           "inspect", "pad_image"]
