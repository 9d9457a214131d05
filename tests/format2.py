"""Streams of bitstream format 2 as its encoder wrote them, for the tests of the decoder that stays
for them: ``varint(number of words) | words (uint16 LE) | escaped values`` of one rANS stream with four
interleaved states over all symbols. No encoder of the package writes format 2 any more;
``tests/test_golden.py`` checks that this one writes the golden v2 streams byte for byte."""

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
    """The format-2 stream of the integer ``values`` coded with the table rows ``indexes``."""
    values, indexes = np.asarray(values).reshape(-1), np.asarray(indexes).reshape(-1)
    states, backwards, escapes = [STATE_LOW] * LANES, [], []
    for i in range(values.size - 1, -1, -1):  # rANS codes backwards; symbol i uses state i % 4
        row, value = int(indexes[i]), int(values[i])
        tail, symbol = int(tables.length[row]) - 2, value - int(tables.offset[row])
        if not 0 <= symbol < tail:
            escapes.append(value)
            symbol = tail
        low = int(tables.cdf[row, symbol])
        width = int(tables.cdf[row, symbol + 1]) - low
        state = states[i % LANES]
        if state >= width << 16:
            backwards.append(state & 0xFFFF)
            state >>= 16
        states[i % LANES] = ((state // width) << PROB_BITS) + state % width + low
    for state in reversed(states):
        backwards += [state & 0xFFFF, state >> 16]
    words = np.array(backwards[::-1], dtype="<u2")
    return _varint(words.size) + words.tobytes() + encode_escapes(np.array(escapes[::-1], dtype=np.int32))
