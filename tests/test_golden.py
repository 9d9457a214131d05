"""Golden bitstreams: streams written by an earlier build still decode to the same image, and the
same input still encodes to the same bytes. A failure here means existing .hpcm files would no
longer decode: bump ``hpcm.codec.bitstream.FORMAT_VERSION`` on purpose and remake the streams with
``python -m tests.golden_streams``."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from hpcm.codec import bitstream, inspect
from hpcm.codec.images import load_image, to_uint8
from hpcm.runtime.session import eager_codec

from .golden_streams import GOLDEN, golden_model

CASES = json.loads((GOLDEN / "golden.json").read_text())


def test_golden_streams_have_this_format_version():
    assert CASES["format_version"] == bitstream.FORMAT_VERSION, (
        "the bitstream format version changed: remake the golden streams (python -m tests.golden_streams)")
    assert {c["guard_epsilon"] > 0 for c in CASES["cases"]} == {True, False}  # guarded and unguarded
    assert all((c["guard_positions"] > 0) == (c["guard_epsilon"] > 0) for c in CASES["cases"])


@pytest.mark.parametrize("case", CASES["cases"], ids=lambda c: c["stream"])
def test_golden_stream_decodes_to_its_image_and_reencodes_to_its_bytes(case):
    data = (GOLDEN / case["stream"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == case["stream_sha256"]
    assert inspect(data).variant == case["variant"]
    codec = eager_codec(golden_model(case["variant"]))
    decoded = np.ascontiguousarray(to_uint8(codec.decompress(data).x_hat))
    assert hashlib.sha256(decoded.tobytes()).hexdigest() == case["decoded_sha256"]
    again = codec.compress(load_image(GOLDEN / case["image"]), guard_epsilon=case["guard_epsilon"]).data
    assert again == data
