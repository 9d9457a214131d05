"""Checkpoints: save/load (ours, and raw state_dicts of the official code and the LIC-HPCM-LALIC fork),
variant conversion, size report.

The project's own checkpoints (format 2) record the variant spec and a SHA-256 over the spec and every
tensor (name, dtype, shape, bytes), verified on load: a flipped byte anywhere in the weights or the
spec is refused instead of silently coding with other weights. They always hold the entropy tables
(computed with ``HPCM.update()`` before saving when the model has none). Format 1 files (no digest)
still load, with a notice. Raw state_dicts record no variant: ``recognise`` reads it off the keys
(and maps the fork's layout, ``fork``).
"""

from __future__ import annotations

import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch

from hpcm.digests import document_digest, hash_tensors
from hpcm.errors import CheckpointError, VariantError
from hpcm.files import atomic_output
from hpcm.log import LOG

from .cdf_tables import TABLE_NAMES
from .fork import strip_data_parallel
from .hpcm import HPCM, build_model, check_model_size
from .recognise import CheckpointContents, describe_state_dict
from .variants import VariantSpec, get_variant, with_dimensions

FORMAT = "hpcm-rwkv-checkpoint"
FORMAT_VERSION = 2  # 2: tensors_sha256, the digest of the spec and every tensor
DIGEST_KEY = "tensors_sha256"
_ZIP_MAGIC = b"PK\x03\x04"


def content_digest(variant: dict, state_dict: dict) -> str:
    """Hex SHA-256 over the variant spec and every tensor of ``state_dict`` (sorted by name)."""
    digest = document_digest(variant)
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


# How torch's weights-only unpickler words a refusal of what a pickle asks for (a global such as
# posix.system, a call, an object build), as opposed to bytes that are no pickle at all.
_UNSAFE_PICKLE = re.compile(r"unsupported global:?\s*(?:GLOBAL\s+)?(?P<name>[\w.]+)|Trying to call reduce"
                            r"|Can only (?:build|create)", re.IGNORECASE)


def _load_failure(path: Path, exc: BaseException) -> CheckpointError:
    """Our one-line reason for a file torch cannot load (never torch's advice to turn off weights_only)."""
    with open(path, "rb") as f:
        is_archive = f.read(4) == _ZIP_MAGIC
    unsafe = _UNSAFE_PICKLE.search(str(exc)) if isinstance(exc, pickle.UnpicklingError) else None
    if unsafe:
        found = f" (it asks for {unsafe.group('name')})" if unsafe.group("name") else ""
        return CheckpointError(f"{path} holds pickled Python objects besides tensors and plain containers{found}; "
                               "they are refused unread because unpickling them could run code (save the state_dict "
                               "alone)")
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


def _read_payload(path: Path) -> dict:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a regular file")
    try:
        with warnings.catch_warnings():  # torch's advice on pickle protocols: the failure below says what is wrong
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for non-checkpoint files
        raise _load_failure(path, exc) from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}, not a state_dict")
    return payload


def _split_payload(path: Path, payload: dict) -> tuple[Optional[VariantSpec], dict]:
    if payload.get("format") == FORMAT:
        return _verified(path, payload)
    for wrapper in ("state_dict", "model", "net"):
        if isinstance(payload.get(wrapper), dict):
            payload = payload[wrapper]
            break
    if not payload or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointError(f"{path} is neither an hpcm-rwkv checkpoint nor a state_dict")
    return None, strip_data_parallel(payload)[0]


def read_checkpoint(path: Union[str, Path]) -> tuple[Optional[VariantSpec], dict]:
    """(variant recorded in the file or None for a raw/official/fork state_dict, state_dict as saved
    but without DataParallel's ``module.`` prefixes)."""
    path = Path(path)
    return _split_payload(path, _read_payload(path))


def describe_payload(payload: dict, where: Union[str, Path]) -> CheckpointContents:
    """What a loaded checkpoint payload is: an hpcm-rwkv checkpoint, or a raw state_dict (official
    HPCM, LIC-HPCM-LALIC fork or this project's; bare or in a training file, with or without
    ``module.`` prefixes) described by ``recognise.describe_state_dict``."""
    recorded, state_dict = _split_payload(Path(where), payload)
    if recorded is not None:
        return CheckpointContents("hpcm-rwkv checkpoint", recorded, state_dict,
                                  [f"variant {recorded.name} recorded in the file"])
    return describe_state_dict(state_dict, payload)


def inspect_checkpoint(path: Union[str, Path]) -> CheckpointContents:
    """Read a checkpoint file and say what it holds (``describe_payload``)."""
    path = Path(path)
    return describe_payload(_read_payload(path), path)


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


def model_from_contents(contents: CheckpointContents, variant: Union[str, VariantSpec, None],
                        where: Union[str, Path]) -> HPCM:
    """The model of a described checkpoint, as the variant recorded in it or recognised from its keys;
    ``variant`` must then agree, and is needed only when the keys cannot decide."""
    requested = get_variant(variant) if variant is not None else None
    found = contents.variant
    if found is not None and requested is not None and requested.name != found.name:
        raise CheckpointError(
            f"{where} holds variant {found.name!r}, not {requested.name!r}; "
            f"use `hpcm convert {where} --to {requested.name}` to migrate it"
        )
    spec = found or requested
    if spec is None:
        fits = (f"its keys fit {', '.join(contents.candidates)}" if contents.candidates
                else "its keys fit no known variant")
        raise CheckpointError(f"{where} records no variant and {fits}; pass the variant it was trained as with "
                              "--variant (hpcm convert: --from), a name, expression or .json file")
    try:
        check_model_size(spec)
    except VariantError as exc:
        raise CheckpointError(f"{where}: {exc}") from exc
    for notice in contents.notices:
        LOG.warning(f"{where}: {notice}")
    model = HPCM(spec)
    problem = _mismatch_message(model, contents.state_dict)
    if problem:
        raise CheckpointError(f"{where} does not fit variant {spec.name!r}: {problem}")
    model.load_state_dict(contents.state_dict, strict=True)
    return model


def load_checkpoint(path: Union[str, Path], variant: Union[str, VariantSpec, None] = None) -> HPCM:
    """A model with the weights of a checkpoint of this project, of the official HPCM code or of the
    LIC-HPCM-LALIC fork (``model_from_contents``)."""
    return model_from_contents(inspect_checkpoint(path), variant, path)


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
    computed from the converted weights (the source's z tables belong to its own z scales). The target
    keeps the source's M and N, and says so in its name (``phase2+M=192+N=128``)."""
    model = build_model(with_dimensions(get_variant(target), source.spec.M, source.spec.N), seed=seed)
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
