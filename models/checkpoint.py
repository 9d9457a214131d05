"""Checkpoints: save/load (ours and the official raw state_dicts), variant conversion, size report.

The project's own checkpoints (format 2) record the variant spec and a SHA-256 over the spec and every
tensor (name, dtype, shape, bytes), verified on load: a flipped byte anywhere in the weights or the
spec is refused instead of silently coding with other weights. They always hold the entropy tables
(computed with ``HPCM.update()`` before saving when the model has none). Format 1 files (no digest)
still load, with a notice.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Union

import torch

from hpcm.errors import CheckpointError, VariantError
from hpcm.files import atomic_output
from hpcm.log import LOG

from .cdf_tables import TABLE_NAMES
from .hpcm import HPCM, build_model, check_model_size
from .variants import VariantSpec, get_variant

FORMAT = "hpcm-rwkv-checkpoint"
FORMAT_VERSION = 2  # 2: tensors_sha256, the digest of the spec and every tensor
DIGEST_KEY = "tensors_sha256"
_ZIP_MAGIC = b"PK\x03\x04"


def hash_tensors(digest: "hashlib._Hash", items: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Feed named tensors to ``digest``: name, dtype, shape and bytes of each, in the order given (the
    one tensor-hashing scheme: checkpoints here, the bitstream's weights and tables digests in the codec)."""
    for name, tensor in items:
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def content_digest(variant: dict, state_dict: dict) -> str:
    """Hex SHA-256 over the variant spec and every tensor of ``state_dict`` (sorted by name)."""
    digest = hashlib.sha256(json.dumps(variant, sort_keys=True).encode())
    hash_tensors(digest, sorted(state_dict.items()))
    return digest.hexdigest()


def save_checkpoint(model: HPCM, path: Union[str, Path], extra: Optional[dict] = None,
                    inputs: tuple[Union[str, Path, None], ...] = ()) -> Path:
    """Write ``model`` (with its entropy tables, computed first if it has none) atomically, never over
    one of ``inputs``."""
    if not model.has_entropy_tables:
        model.update()
    variant = model.spec.to_dict()
    state_dict = model.state_dict()
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "variant": variant,
        "state_dict": state_dict,
        DIGEST_KEY: content_digest(variant, state_dict),
        **(extra or {}),
    }
    with atomic_output(path, inputs) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def _load_failure(path: Path, exc: BaseException) -> CheckpointError:
    """Our one-line reason for a file torch cannot load (never torch's advice to turn off weights_only)."""
    with open(path, "rb") as f:
        is_archive = f.read(4) == _ZIP_MAGIC
    if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in str(exc):
        return CheckpointError(f"{path} holds Python objects besides tensors and plain containers; they are not "
                               "loaded because unpickling them could run code (save the state_dict alone)")
    if is_archive:
        return CheckpointError(f"{path} is damaged: its PyTorch archive cannot be read ({type(exc).__name__})")
    return CheckpointError(f"{path} is not a readable PyTorch checkpoint (neither an archive nor tensors)")


def _verified(path: Path, payload: dict) -> tuple[VariantSpec, dict]:
    """The spec and state_dict of one of our checkpoints, after checking its digest."""
    version = payload.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer hpcm-rwkv (format {version!r})")
    variant, state_dict = payload.get("variant"), payload.get("state_dict")
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path} is damaged: its state_dict is not a mapping of tensors")
    try:
        spec = VariantSpec.from_dict(variant)
    except VariantError as exc:
        raise CheckpointError(f"{path}: its variant spec is invalid: {exc}") from exc
    if version >= 2:
        if payload.get(DIGEST_KEY) != content_digest(variant, state_dict):
            raise CheckpointError(f"{path} is damaged or was altered: its tensors or variant do not match the "
                                  "digest saved with them (use an intact copy)")
    else:
        LOG.warning(f"{path} is a format-{version} checkpoint without a digest of its tensors; it cannot be "
                    "checked for damage (save it again to add one)")
    return spec, state_dict


def read_checkpoint(path: Union[str, Path]) -> tuple[Optional[VariantSpec], dict]:
    """(variant recorded in the file or None for a raw/official state_dict, state_dict)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a regular file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for non-checkpoint files
        raise _load_failure(path, exc) from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}, not a state_dict")
    if payload.get("format") == FORMAT:
        return _verified(path, payload)
    for wrapper in ("state_dict", "model", "net"):
        if isinstance(payload.get(wrapper), dict):
            payload = payload[wrapper]
            break
    if not payload or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointError(f"{path} is neither an hpcm-rwkv checkpoint nor a state_dict")
    # DataParallel prefixes every key with "module."
    if all(k.startswith("module.") for k in payload):
        payload = {k[len("module."):]: v for k, v in payload.items()}
    return None, payload


def _mismatch_message(model: HPCM, state_dict: dict) -> str:
    own = model.state_dict()
    # Checkpoints from before the official adaptive_params_list load with a warning (HPCM.load_state_dict).
    missing = [k for k in own if k not in state_dict and not k.startswith("adaptive_params_list.")]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape
              and not k.startswith(("scale_table", "quantized_cdf", "cdf_length", "offset_"))]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if keys:
            parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
    return "; ".join(parts)


def load_checkpoint(path: Union[str, Path], variant: Union[str, VariantSpec, None] = None) -> HPCM:
    """A model with the checkpoint's weights. A raw (official) state_dict records no variant: give
    ``variant``; without it, one that fits baseline (the official HPCM-Base) loads as that, with a notice."""
    recorded, state_dict = read_checkpoint(path)
    if recorded is not None and variant is not None and get_variant(variant).name != recorded.name:
        raise CheckpointError(
            f"{path} holds variant {recorded.name!r}, not {get_variant(variant).name!r}; "
            f"use `hpcm convert {path} --to {get_variant(variant).name}` to migrate it"
        )
    spec = recorded or get_variant(variant or "baseline")
    try:
        check_model_size(spec)
    except VariantError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    model = HPCM(spec)
    problem = _mismatch_message(model, state_dict)
    if problem and recorded is None and variant is None:
        raise CheckpointError(f"{path} records no variant and does not fit baseline ({problem}); pass the variant "
                              "it was trained as with --variant (a name or a .json file)")
    if problem:
        raise CheckpointError(f"{path} does not fit variant {spec.name!r}: {problem}")
    if recorded is None and variant is None:
        LOG.warning(f"{path} records no variant; it fits baseline (the official HPCM-Base) and is loaded as that "
                    "(pass --variant if it is another)")
    model.load_state_dict(state_dict, strict=True)
    return model


@dataclass
class ConversionReport:
    carried: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def group(keys: list[str]) -> str:
            tops = sorted({k.split(".")[0] for k in keys})
            return ", ".join(tops) if tops else "none"

        return (
            f"carried {len(self.carried)} tensors; initialised {len(self.initialised)} "
            f"({group(self.initialised)}); dropped {len(self.dropped)} ({group(self.dropped)})"
        )


def convert_model(source: HPCM, target: Union[str, VariantSpec], seed: int = 0) -> tuple[HPCM, ConversionReport]:
    """A ``target`` model carrying every tensor of ``source`` with the same name and shape;
    everything else keeps its fresh (seeded) initialisation. The entropy tables are not carried but
    computed from the converted weights (the source's z tables belong to its own z scales)."""
    model = build_model(target, seed=seed)
    report = ConversionReport()
    source_state = {k: v for k, v in source.state_dict().items() if k not in TABLE_NAMES}
    target_state = {k: v for k, v in model.state_dict().items() if k not in TABLE_NAMES}
    merged = {}
    for key, value in target_state.items():
        carried = source_state.get(key)
        if carried is not None and carried.shape == value.shape:
            merged[key] = carried
            report.carried.append(key)
        else:
            merged[key] = value
            report.initialised.append(key)
    report.dropped = [k for k in source_state if k not in target_state or k in report.initialised]
    model.load_state_dict(merged, strict=False)  # everything but the tables, which are computed next
    model.update()
    return model, report


def parameter_table(model: HPCM) -> list[tuple[str, int]]:
    """Parameters per top-level module, in definition order, then the total."""
    rows = [(name, sum(p.numel() for p in module.parameters())) for name, module in model.named_children()]
    rows = [(n, c) for n, c in rows if c]
    direct = sum(p.numel() for n, p in model.named_parameters(recurse=False))
    if direct:
        rows.append(("(model parameters: means_hyper, scales_hyper)", direct))
    rows.append(("total", sum(p.numel() for p in model.parameters())))
    return rows
