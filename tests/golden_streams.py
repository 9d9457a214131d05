"""The golden bitstreams of tests/golden/: how they are made, and the command that remakes them
(run it only when the bitstream format changes on purpose, after bumping its version):

    python -m tests.golden_streams

For each case: a small 8-bit input image, its .hpcm stream from the golden model of the variant, and
in golden.json the SHA-256 of the stream and of the decoded 8-bit image. The golden model is the
seeded untrained model with the last layers of g_a and h_s scaled by ``GAIN``: untrained, y rounds
to zero everywhere and every scale sits at the lower bound, which would leave the y coder and the
boundary guard untested; scaled, y holds real symbols and some scales fall near bucket boundaries.
``tests/test_golden.py`` checks that today's code decodes every stream to that image and encodes the
input to the same bytes, so a change that would make existing .hpcm files undecodable fails CI
until the format version is bumped and this script is run again.

The phase2 and phase3 streams were remade without a format change when those names became the
LIC-HPCM-LALIC fork's classes (post-LN blocks, another network): streams of the earlier pre-LN
variants, now phase2-preln/phase3-preln, name their variant "phase2"/"phase3" and are refused by
name. The baseline stream came out byte-identical, the check that the format itself did not move.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hpcm.codec import bitstream
from hpcm.codec.guard import GuardReader
from hpcm.codec.images import load_image, synthetic_images, to_uint8
from hpcm.models import build_model
from hpcm.runtime.session import eager_codec

GOLDEN = Path(__file__).resolve().parent / "golden"
# (file stem, variant, image side, guard epsilon): one guarded and one unguarded stream, three variants
CASES = (("phase2_guarded", "phase2", 96, 1e-5), ("baseline_unguarded", "baseline", 64, 0.0),
         ("phase3_guarded", "phase3", 80, 1e-5))
SEED = 0
GAIN = 8.0


def golden_model(variant: str) -> torch.nn.Module:
    """The seeded model of ``variant`` with its y and hyper-parameter outputs scaled by ``GAIN``."""
    model = build_model(variant, seed=SEED).eval()
    with torch.no_grad():
        for transform in (model.g_a, model.h_s):
            last = [m for m in transform.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))][-1]
            last.weight.mul_(GAIN)
            last.bias.mul_(GAIN)
    model.update()
    return model


def _guard_positions(data: bytes) -> int:
    values = GuardReader(bitstream.unpack(data)[1][2]).values
    listed, cursor = 0, 0
    while cursor < values.size:  # per step: a count, then that many gaps
        listed += int(values[cursor])
        cursor += 1 + int(values[cursor])
    return listed


def main() -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    cases = []
    for index, (stem, variant, side, epsilon) in enumerate(CASES):
        codec = eager_codec(golden_model(variant))
        image_path = GOLDEN / f"{stem}.png"
        # The first synthetic image whose stream exercises what the case says (guard positions or none).
        for image_seed in range(100 * index, 100 * index + 50):
            (_, x), = synthetic_images(1, side, seed=image_seed)
            Image.fromarray(to_uint8(x)).save(image_path)
            data = codec.compress(load_image(image_path), guard_epsilon=epsilon).data
            listed = _guard_positions(data)
            if (listed > 0) == (epsilon > 0):
                break
        else:
            raise SystemExit(f"{stem}: no image of the first 50 gives a stream that tests what the case says")
        (GOLDEN / f"{stem}.hpcm").write_bytes(data)
        decoded = to_uint8(codec.decompress(data).x_hat)
        cases.append({"stream": f"{stem}.hpcm", "image": image_path.name, "variant": variant, "seed": SEED,
                      "gain": GAIN, "guard_epsilon": epsilon, "guard_positions": listed, "bytes": len(data),
                      "stream_sha256": hashlib.sha256(data).hexdigest(),
                      "decoded_sha256": hashlib.sha256(np.ascontiguousarray(decoded).tobytes()).hexdigest()})
        print(f"{stem}: {len(data)} bytes, {listed} guard positions")
    (GOLDEN / "golden.json").write_text(json.dumps({"format_version": bitstream.FORMAT_VERSION, "cases": cases},
                                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
