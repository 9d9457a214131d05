"""Streams of bitstream format 2 as its encoder wrote them, for the tests of the decoder that stays
for them: one 4-lane rANS stream for all symbols, then the escaped values. No encoder of the package
writes format 2 any more; ``tests/test_golden.py`` checks that this one writes the golden v2 streams
byte for byte."""

from __future__ import annotations

import numpy as np

from hpcm.codec.rans import LANES, PROB_BITS, STATE_LOW, CdfTables, encode_escapes


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def format2_stream(values: np.ndarray, indexes: np.ndarray, tables: CdfTables) -> bytes:
    """``varint(number of words) | words (uint16 LE) | escaped values`` of the integer ``values`` coded
    with the table rows ``indexes``."""
    values, indexes = np.asarray(values).reshape(-1), np.asarray(indexes).reshape(-1)
    states, backwards, escapes = [STATE_LOW] * LANES, [], []
    for i in range(values.size - 1, -1, -1):
        row, value = int(indexes[i]), int(values[i])
        tail, s = int(tables.length[row]) - 2, value - int(tables.offset[row])
        if s < 0 or s >= tail:
            escapes.append(value)
            s = tail
        start = int(tables.cdf[row, s])
        freq = int(tables.cdf[row, s + 1]) - start
        x = states[i % LANES]
        if x >= freq << 16:
            backwards.append(x & 0xFFFF)
            x >>= 16
        states[i % LANES] = ((x // freq) << PROB_BITS) + (x % freq) + start
    for lane in range(LANES - 1, -1, -1):
        backwards += [states[lane] & 0xFFFF, states[lane] >> 16]
    words = np.array(backwards[::-1], dtype="<u2")
    return _varint(words.size) + words.tobytes() + encode_escapes(np.array(escapes[::-1], dtype=np.int32))
