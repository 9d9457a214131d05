"""Peak memory of the worst hostile inputs, through the CLI (the README's "Hostile input and limits").

Each case runs ``hpcm`` in a subprocess under an address-space limit and one thread, and reports its
exit code, peak resident memory (``ru_maxrss``), time and last line. Run from the repository root:

    python scripts/measure_hostile.py [--folder /tmp/hpcm-hostile]

The last three cases code a 2048x2048 image with the seeded phase2 model (a few minutes, about 4.5 GB).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpcm.codec import CodecParameters  # noqa: E402
from hpcm.codec.bitstream import Header, pack, unpack  # noqa: E402
from hpcm.codec.entropy import StreamEncoder  # noqa: E402
from hpcm.models import build_model  # noqa: E402
from tests.hostile import png_bomb, run_limited, write_image  # noqa: E402


@click.command()
@click.option("--folder", type=click.Path(file_okay=False, path_type=Path), default=Path("/tmp/hpcm-hostile"),
              show_default=True, help="where the generated inputs go")
def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)

    def case(name: str, args: list, limit: int = 3 << 30) -> None:
        start = time.perf_counter()
        run = run_limited(args, env={"OMP_NUM_THREADS": "1"}, limit=limit, timeout=3600)
        last = [line for line in run.output.splitlines() if line.strip()][-1]
        click.echo(f"{name}: exit {run.returncode}, peak {run.peak_mb:.0f} MB, {time.perf_counter() - start:.1f} s"
                   f"\n    {last[:200]}")

    image = write_image(folder / "small.png", 40, 56)
    case("encode 56x40 (reference)", ["encode", image, "-o", folder / "small.hpcm"])
    header, streams = unpack((folder / "small.hpcm").read_bytes())
    huge = folder / "huge.hpcm"
    huge.write_bytes(pack(Header(**{**header.__dict__, "height": 60000, "width": 60000, "pad_bottom": 32,
                                    "pad_right": 32}), streams))
    case(f"decode a 60000x60000 claim with valid CRCs ({huge.stat().st_size} bytes)",
         ["decode", huge, "-o", folder / "x.png"])
    model = build_model("phase2", seed=0).eval()
    model.update()
    z = StreamEncoder(CodecParameters.from_model(model).tables.z)
    z.add(torch.zeros(256 * 32 * 32), indexes=torch.arange(256).repeat_interleave(32 * 32))
    forged = folder / "forged.hpcm"
    forged.write_bytes(pack(Header(**{**header.__dict__, "height": 2048, "width": 2048, "pad_bottom": 0,
                                      "pad_right": 0}), [z.finish(), streams[1], streams[2]]))
    case("decode a 2048x2048 claim with a forged valid all-zero z", ["decode", forged, "-o", folder / "x.png"],
         12 << 30)
    for device in ("/dev/zero", "/dev/urandom"):
        case(f"decode {device}", ["decode", device, "-o", folder / "x.png"])
        case(f"inspect {device}", ["inspect", device])
    big = folder / "big.hpcm"
    big.write_bytes((folder / "small.hpcm").read_bytes())
    os.truncate(big, 8 << 30)  # sparse
    case("inspect an 8 GiB file with a valid header", ["inspect", big])
    big.unlink()
    bomb = png_bomb(folder / "bomb.png", 12000, 12000)
    case(f"encode a 12000x12000 PNG bomb ({bomb.stat().st_size // 1024} KB)", ["encode", bomb, "-o", folder / "b.hpcm"])
    for side in (1024, 2048):
        flat = folder / f"flat{side}.png"
        Image.new("RGB", (side, side), (120, 130, 140)).save(flat)
        case(f"encode a flat {side}x{side} image", ["encode", flat, "-o", folder / f"flat{side}.hpcm"], 12 << 30)
    stream = folder / "flat2048.hpcm"
    case(f"decode the flat 2048x2048 stream ({stream.stat().st_size} bytes)", ["decode", stream, "-o",
                                                                             folder / "flat2048_out.png"], 12 << 30)


if __name__ == "__main__":
    main()
