"""Checkpoints: save/load (ours and the official raw state_dicts), variant conversion, size report."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch

from hpcm.errors import CheckpointError

from .hpcm import HPCM, build_model
from .variants import VariantSpec, get_variant

FORMAT = "hpcm-rwkv-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(model: HPCM, path: Union[str, Path], extra: Optional[dict] = None) -> Path:
    """Write atomically (temp file + rename), so an interrupted save never leaves a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "variant": model.spec.to_dict(),
        "state_dict": model.state_dict(),
        **(extra or {}),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_checkpoint(path: Union[str, Path]) -> tuple[Optional[VariantSpec], dict]:
    """(variant recorded in the file or None for a raw/official state_dict, state_dict)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for non-checkpoint files
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}, not a state_dict")
    if payload.get("format") == FORMAT:
        if payload.get("format_version", 0) > FORMAT_VERSION:
            raise CheckpointError(f"{path} was written by a newer hpcm-rwkv (format {payload['format_version']})")
        return VariantSpec.from_dict(payload["variant"]), payload["state_dict"]
    for wrapper in ("state_dict", "model", "net"):
        if isinstance(payload.get(wrapper), dict):
            payload = payload[wrapper]
            break
    if not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointError(f"{path} is neither an hpcm-rwkv checkpoint nor a state_dict")
    # DataParallel prefixes every key with "module."
    if payload and all(k.startswith("module.") for k in payload):
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
    """A model with the checkpoint's weights. Official checkpoints need ``variant`` (default baseline)."""
    recorded, state_dict = read_checkpoint(path)
    if recorded is not None and variant is not None and get_variant(variant).name != recorded.name:
        raise CheckpointError(
            f"{path} holds variant {recorded.name!r}, not {get_variant(variant).name!r}; "
            f"use `hpcm convert {path} --to {get_variant(variant).name}` to migrate it"
        )
    spec = recorded or get_variant(variant or "baseline")
    model = HPCM(spec)
    problem = _mismatch_message(model, state_dict)
    if problem:
        raise CheckpointError(f"{path} does not fit variant {spec.name!r}: {problem}")
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
    everything else keeps its fresh (seeded) initialisation."""
    model = build_model(target, seed=seed)
    report = ConversionReport()
    source_state = source.state_dict()
    target_state = model.state_dict()
    merged = {}
    for key, value in target_state.items():
        carried = source_state.get(key)
        if carried is not None and (carried.shape == value.shape or carried.numel() == 0 or value.numel() == 0):
            merged[key] = carried
            report.carried.append(key)
        else:
            merged[key] = value
            report.initialised.append(key)
    report.dropped = [k for k in source_state if k not in target_state or k in report.initialised]
    model.load_state_dict(merged, strict=True)
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
