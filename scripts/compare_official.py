"""Compare this port with the official HPCM code on CPU (a local check; nothing of it enters the repo).

    git clone https://github.com/lyq133/LIC-HPCM /tmp/official   # any checkout with src/
    pip install einops
    python scripts/compare_official.py --official /tmp/official [--checkpoint official.pth.tar]

The official package imports two prebuilt Python-3.8 coder modules and hard-codes device='cuda' for
``adaptive_params_list``; this script registers empty stand-ins for the modules and builds the model
with CUDA tensor creation redirected to the CPU. Both models then get the same weights (random, seeded,
or the given checkpoint) and the same input; the script prints the largest differences of x_hat and
of the y and z likelihoods, and exits non-zero when they exceed float32 tolerances.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path
from typing import Callable

import torch


def build_on_cpu(constructor: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``constructor()`` with ``torch.ones`` ignoring ``device=``: the official and fork code create
    some parameters with ``device="cuda"``, and these comparisons run on CPU."""
    real_ones = torch.ones

    def cpu_ones(*args, **kwargs):
        kwargs.pop("device", None)
        return real_ones(*args, **kwargs)

    torch.ones = cpu_ones
    try:
        return constructor()
    finally:
        torch.ones = real_ones


def load_official(root: Path):
    for name in ("src.entropy_models._CXX", "src.entropy_models.unbounded_ans"):
        stand_in = types.ModuleType(name)
        for attr in ("pmf_to_quantized_cdf", "ubransEncoder", "ubransDecoder"):
            setattr(stand_in, attr, None)
        sys.modules[name] = stand_in
    sys.path.insert(0, str(root))
    from src.models.HPCM_Base import HPCM  # noqa: E402  (official code, local checkout)

    return build_on_cpu(HPCM)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, required=True, help="checkout of lyq133/LIC-HPCM (contains src/)")
    parser.add_argument("--checkpoint", type=Path, help="official state_dict; random seeded weights otherwise")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from hpcm.models import build_model

    torch.manual_seed(args.seed)
    official = load_official(args.official).eval()
    ours = build_model("baseline").eval()
    if args.checkpoint:
        state = torch.load(args.checkpoint, map_location="cpu")
        official.load_state_dict(state, strict=True)
    else:
        state = official.state_dict()
    ours.load_state_dict(state, strict=True)

    official_keys = {k: tuple(v.shape) for k, v in official.state_dict().items()}
    our_keys = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    print(f"state_dict entries: official {len(official_keys)}, port {len(our_keys)}, identical: {official_keys == our_keys}")

    x = torch.rand(1, 3, *args.size, generator=torch.Generator().manual_seed(args.seed))
    with torch.no_grad():
        theirs = official(x, training=False)
        mine = ours(x, training=False)
    diffs = {
        "x_hat": (theirs["x_hat"] - mine["x_hat"]).abs().max().item(),
        "likelihood_y": (theirs["likelihoods"]["y"] - mine["likelihoods"]["y"]).abs().max().item(),
        "likelihood_z": (theirs["likelihoods"]["z"] - mine["likelihoods"]["z"]).abs().max().item(),
    }
    for name, value in diffs.items():
        print(f"max |official - port| {name}: {value:.3e}")
    ok = official_keys == our_keys and diffs["x_hat"] < 1e-4 and diffs["likelihood_y"] < 1e-4 and diffs["likelihood_z"] < 1e-6
    print("MATCH" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
