"""Streams of bitstream format 2 as its encoder wrote them, for the tests of the decoder that stays
for them. A format-2 stream is one substream of today's coder over all its symbols, written as
``varint(number of words) | words (uint16 LE) | escaped values``; ``tests/test_golden.py`` checks that
this writes the golden v2 streams byte for byte."""

from __future__ import annotations

import numpy as np

from hpcm.codec.rans import CdfTables, Coder, encode_escapes


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def format2_stream(values: np.ndarray, indexes: np.ndarray, tables: CdfTables) -> bytes:
    """The format-2 stream of the integer ``values`` coded with the table rows ``indexes``."""
    values = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    indexes = np.ascontiguousarray(indexes, dtype=np.int32).reshape(-1)
    coded = Coder().encode(values, tables, np.array([0, values.size], dtype=np.int64), indexes=indexes)
    (words,), (escapes,) = coded.words, coded.escapes
    return _varint(words.size) + words.astype("<u2").tobytes() + encode_escapes(escapes)
