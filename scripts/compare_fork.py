"""Compare phase1..phase4 with the LIC-HPCM-LALIC fork's classes on CPU (a local check; nothing of the
fork enters the repo).

    git clone https://github.com/yutendo0714/LIC-HPCM-LALIC /tmp/fork   # any checkout with src/
    pip install einops
    python scripts/compare_fork.py --fork /tmp/fork [--phases 1 2 3 4] [--size 256 256] [--wkv exact|vrwkv]
    python scripts/compare_fork.py --fork /tmp/fork --phases 2 --checkpoint epoch_best.pth.tar
    python scripts/compare_fork.py --fork /tmp/fork --write-fixtures tests/fixtures --fork-revision e29498b

The fork imports prebuilt coder modules, scipy (only for its CDF tables) and builds Vision-RWKV's
CUDA kernel on import, and creates ``adaptive_params_list`` on 'cuda'. This script registers stand-ins
for those modules, puts a Bi-WKV in place of the CUDA op and builds each class with CUDA tensor
creation redirected to the CPU. The op in the fork's place is the project's exact op with
``--wkv exact`` (compared with ``phaseN``) or the project's evaluation of the CUDA kernel's formula
with ``--wkv vrwkv`` (compared with ``phaseN-vrwkv``; tests check it against its float64 reference). Both sides get the same weights (the fork's random
initialisation, or the given checkpoint) through the documented key mapping (``hpcm.models.fork``),
strictly, and the same input; the script prints the largest differences of x_hat and of the y and z
likelihoods and exits non-zero above float32 tolerances. ``--write-fixtures`` writes the fork's
state_dict tables (key, shape, dtype) that ``tests/test_fork.py`` checks the variants against.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_official import build_on_cpu  # noqa: E402  (the same CPU construction)

# Largest accepted max |fork - ours| differences (float32 rounding of two different op orders).
TOLERANCE = {"x_hat": 1e-4, "likelihood_y": 1e-4, "likelihood_z": 1e-6}


def install_stand_ins(wkv: str) -> None:
    """Modules the fork imports that cannot load here, replaced before its code is imported."""
    from hpcm.plugins.biwkv import biwkv, biwkv_vrwkv

    for name in ("src.entropy_models._CXX", "src.entropy_models.unbounded_ans"):
        stand_in = types.ModuleType(name)
        for attr in ("pmf_to_quantized_cdf", "ubransEncoder", "ubransDecoder"):
            setattr(stand_in, attr, None)
        sys.modules[name] = stand_in
    try:
        import scipy.stats  # noqa: F401 - the fork's GGM uses it only to build CDF tables
    except ImportError:
        scipy = types.ModuleType("scipy")
        scipy.stats = types.ModuleType("scipy.stats")
        sys.modules.update({"scipy": scipy, "scipy.stats": scipy.stats})

    def run_biwkv(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # the fork's op takes and returns (B, T, C); ours is (B, C, T)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        y = biwkv(w, u, k, v) if wkv == "exact" else biwkv_vrwkv(w, u, k, v)
        return y.transpose(1, 2)

    op = types.ModuleType("src.models.rwkv_modules.biwkv4")
    op.ensure_biwkv4_loaded = lambda: None
    op.RUN_BiWKV4_HPCM = run_biwkv
    sys.modules[op.__name__] = op


def build_fork_model(phase: int) -> torch.nn.Module:
    module = importlib.import_module(f"src.models.hpcm_variants.hpcm_phase{phase}")
    return build_on_cpu(lambda: getattr(module, f"HPCM_Phase{phase}")(M=320, N=256))


def fork_revision(root: Path) -> str:
    result = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown revision"


def write_fixture(phase: int, folder: Path, revision: str) -> Path:
    """The fork's state_dict table of one phase: key, shape and dtype of every entry, in order."""
    model = build_fork_model(phase)
    entries = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in model.state_dict().items()]
    parameters = sum(p.numel() for n, p in model.named_parameters() if not n.endswith("conv5x5_reparam.weight"))
    path = folder / f"fork_phase{phase}_state_dict.json"
    lines = ",\n".join("  " + json.dumps(e) for e in entries)
    path.write_text(
        "{\n"
        f'"source": "HPCM_Phase{phase}(M=320, N=256) of yutendo0714/LIC-HPCM-LALIC at {revision}, built on CPU '
        '(scripts/compare_fork.py --write-fixtures); key, shape, dtype of every state_dict entry",\n'
        f'"parameters_without_conv5x5_reparam": {parameters},\n'
        f'"entries": [\n{lines}\n]\n}}\n'
    )
    print(f"wrote {path}: {len(entries)} entries, {parameters:,} parameters")
    return path


def compare(phase: int, wkv: str, size: tuple[int, int], seed: int, checkpoint: Path | None) -> bool:
    from hpcm.models import HPCM
    from hpcm.models.checkpoint import read_checkpoint
    from hpcm.models.fork import from_fork_layout, strip_data_parallel

    torch.manual_seed(seed)
    fork = build_fork_model(phase).eval()
    if checkpoint is not None:
        fork.load_state_dict(strip_data_parallel(read_checkpoint(checkpoint)[1])[0], strict=True)
    state, _ = from_fork_layout(fork.state_dict())
    name = f"phase{phase}" if wkv == "exact" else f"phase{phase}-vrwkv"
    ours = HPCM(name).eval()
    ours.load_state_dict(state, strict=True)

    fork_params = sum(p.numel() for n, p in fork.named_parameters() if not n.endswith("conv5x5_reparam.weight"))
    our_params = sum(p.numel() for p in ours.parameters())
    print(f"phase{phase} vs {name}: fork state_dict {len(fork.state_dict())} entries, "
          f"{fork_params:,} parameters (+ {len(fork.adaptive_params_list)} unsaved adaptive params, "
          f"without the derived conv5x5_reparam); ours {len(ours.state_dict())} entries, {our_params:,} parameters")

    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(seed))
    diffs = {}
    for dtype in (torch.float32, torch.float64):
        fork.to(dtype)
        fork.adaptive_params_list = [p.to(dtype) for p in fork.adaptive_params_list]
        for module in fork.modules():  # OmniShift: derive conv5x5_reparam again, in this dtype
            if hasattr(module, "reparam_flag"):
                module.reparam_flag = True
        ours.to(dtype)
        with torch.no_grad():
            theirs = fork(x.to(dtype), training=False)
            mine = ours(x.to(dtype), training=False)
        diffs[dtype] = {
            "x_hat": (theirs["x_hat"] - mine["x_hat"]).abs().max().item(),
            "likelihood_y": (theirs["likelihoods"]["y"] - mine["likelihoods"]["y"]).abs().max().item(),
            "likelihood_z": (theirs["likelihoods"]["z"] - mine["likelihoods"]["z"]).abs().max().item(),
        }
        within = all(diffs[dtype][k] <= TOLERANCE[k] for k in TOLERANCE)
        values = ", ".join(f"{k} {v:.3e}" for k, v in diffs[dtype].items())
        print(f"  {str(dtype).replace('torch.', ''):<8} max |fork - ours|: {values}  "
              f"({'within' if within else 'ABOVE'} float32 tolerance)")
    # The verdict is the float64 run: the same function without float32 rounding, which phase4's
    # stacked post-LN blocks amplify from 1e-7 to whole quantisation steps (see the README).
    ok = all(diffs[torch.float64][k] <= TOLERANCE[k] for k in TOLERANCE)
    print("  MATCH" if ok else "  MISMATCH")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fork", type=Path, required=True, help="checkout of yutendo0714/LIC-HPCM-LALIC (contains src/)")
    parser.add_argument("--phases", type=int, nargs="+", default=[1, 2, 3, 4], choices=[1, 2, 3, 4])
    parser.add_argument("--wkv", choices=["exact", "vrwkv"], default="exact",
                        help="Bi-WKV in the fork's place: the exact op, or the formula of its CUDA kernel")
    parser.add_argument("--checkpoint", type=Path, help="a fork checkpoint (one phase); random seeded weights otherwise")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-fixtures", type=Path, metavar="DIR",
                        help="write the fork's state_dict tables of --phases into DIR instead of comparing")
    parser.add_argument("--fork-revision", help="revision named in the fixtures (default: git rev-parse of --fork)")
    args = parser.parse_args()
    if args.checkpoint is not None and len(args.phases) != 1:
        parser.error("--checkpoint holds one phase: give it with --phases N")

    install_stand_ins(args.wkv)
    sys.path.insert(0, str(args.fork.resolve()))
    if args.write_fixtures is not None:
        revision = args.fork_revision or fork_revision(args.fork)
        for phase in args.phases:
            write_fixture(phase, args.write_fixtures, revision)
        return 0
    results = [compare(phase, args.wkv, tuple(args.size), args.seed, args.checkpoint) for phase in args.phases]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
