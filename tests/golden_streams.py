"""The golden bitstreams of tests/golden/: how they are made, and the command that makes them for the
current format (run it only when the bitstream format changes on purpose, after bumping its version):

    python -m tests.golden_streams

Each format the decoder reads has its folder, ``tests/golden/v<N>/``. This script writes the current
format's; the folders of earlier formats stay as their encoder wrote them (no encoder writes those
formats any more), so the decoder is held to every format it reads. In each folder, for each case: a small 8-bit input image, its .hpcm stream from the golden model of the variant, the
image that stream decodes to, and ``<stem>.npz`` with what the encoder decided (z symbols, every
step's y symbols and the scale buckets it coded them with) and the entropy tables it coded with; in
golden.json the SHA-256 of the stream. The golden model is the seeded untrained model with the last
layers of g_a and h_s scaled by ``GAIN``: untrained, y rounds to zero everywhere and every scale sits
at the lower bound, which would leave the y coder and the boundary guard untested; scaled, y holds
real symbols and some scales fall near bucket boundaries.

``tests/test_golden.py`` checks, on any machine and for every format: that the stream codes exactly the
recorded decisions
with the recorded tables (rANS and container, both ways: nothing there depends on float math), that
the golden model computes those tables, that guarded streams decode with the golden model to the
recorded image, and that this machine's encoder makes the recorded decisions wherever float32 noise
cannot move them. An image-to-bytes comparison is not among them: an encoder's rounding decisions
near a boundary depend on the last bits of the CPU's float kernels (a guarded stream always has
scales within 1e-5 of a bucket boundary, and float32 moves scales by about 5e-6 between builds), so
bytes written on one machine need not be the bytes another machine writes for the same image, only
decodable there.
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
from hpcm.codec.tables import EntropyTables
from hpcm.models import build_model
from hpcm.models.cdf_tables import scale_indexes
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


def format_folder(version: int) -> Path:
    """Where the golden streams of bitstream format ``version`` are."""
    return GOLDEN / f"v{version}"


def _guard_positions(data: bytes, table: torch.Tensor) -> int:
    return sum(positions.size for positions, _ in GuardReader(bitstream.unpack(data)[1][2], table).steps)


def encoder_decisions(codec, x: torch.Tensor) -> dict[str, np.ndarray]:
    """What ``codec``'s encoder decides for ``x``: z symbols, and every step's y symbols and buckets."""
    z_hat, symbols = codec.latents(x)
    z = (z_hat - codec.means_hyper).round().to(torch.int32).cpu().numpy()
    decisions = {"z": z}
    for step, (q, (scales, _)) in enumerate(zip(symbols, codec.entropy_parameters(z_hat, symbols))):
        decisions[f"y{step}"] = q.to(torch.int32).cpu().numpy()
        decisions[f"index{step}"] = scale_indexes(scales, codec.parameters.tables.scale_table).cpu().numpy()
    return decisions


def main() -> None:
    folder = format_folder(bitstream.FORMAT_VERSION)
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for index, (stem, variant, side, epsilon) in enumerate(CASES):
        model = golden_model(variant)
        codec = eager_codec(model)
        image_path = folder / f"{stem}.png"
        # The first synthetic image whose stream exercises what the case says (guard positions or none).
        for image_seed in range(100 * index, 100 * index + 50):
            (_, x), = synthetic_images(1, side, seed=image_seed)
            Image.fromarray(to_uint8(x)).save(image_path)
            data = codec.compress(load_image(image_path), guard_epsilon=epsilon).data
            listed = _guard_positions(data, codec.parameters.tables.scale_table)
            if (listed > 0) == (epsilon > 0):
                break
        else:
            raise SystemExit(f"{stem}: no image of the first 50 gives a stream that tests what the case says")
        (folder / f"{stem}.hpcm").write_bytes(data)
        Image.fromarray(to_uint8(codec.decompress(data).x_hat)).save(folder / f"{stem}.decoded.png")
        tables = EntropyTables.from_model(model).numpy()
        np.savez_compressed(folder / f"{stem}.npz", **encoder_decisions(codec, load_image(image_path)), **tables)
        cases.append({"stream": f"{stem}.hpcm", "image": image_path.name, "decoded": f"{stem}.decoded.png",
                      "decisions": f"{stem}.npz", "variant": variant, "seed": SEED, "gain": GAIN,
                      "guard_epsilon": epsilon, "guard_positions": listed, "bytes": len(data),
                      "stream_sha256": hashlib.sha256(data).hexdigest()})
        print(f"{stem}: {len(data)} bytes, {listed} guard positions")
    (folder / "golden.json").write_text(json.dumps({"format_version": bitstream.FORMAT_VERSION, "cases": cases},
                                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
