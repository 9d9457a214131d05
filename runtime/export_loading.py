"""An export directory opened for use: the eager model it was made from (with the export's own
entropy tables) and a graph backend that runs its graphs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from hpcm.models import build_model
from hpcm.models.checkpoint import load_checkpoint
from hpcm.models.hpcm import ENTROPY_TABLE_BUFFERS, HPCM
from hpcm.models.variants import VariantSpec


def load_export_model(export_dir: Path, checkpoint: Optional[Path] = None) -> HPCM:
    """The exported weights: ``checkpoint`` (or the manifest's), else the manifest's seeded model.

    CDF tables come from the export's ``entropy_tables.npz`` when it has one, so they are never
    recomputed from floats on this machine.
    """
    export_dir = Path(export_dir)
    manifest = json.loads((export_dir / "manifest.json").read_text())
    spec = VariantSpec.from_dict(manifest["variant"])
    checkpoint = checkpoint or (Path(manifest["checkpoint"]) if manifest.get("checkpoint") else None)
    if checkpoint is not None:
        model = load_checkpoint(checkpoint, spec)
    elif manifest.get("seed") is not None:
        model = build_model(spec, seed=int(manifest["seed"]))
    else:
        raise ValueError(f"{export_dir} records neither a checkpoint nor a seed: pass --checkpoint")
    tables = manifest.get("entropy_tables", {})
    if tables.get("file"):
        with np.load(export_dir / tables["file"]) as stored:
            for name in ENTROPY_TABLE_BUFFERS:
                setattr(model, name, torch.from_numpy(stored[name]))
    elif not model.has_entropy_tables:
        model.update()
    return model.eval()


BACKENDS = ("onnxruntime", "tensorrt")


def open_export(export_dir: Path, backend: str = "onnxruntime", device: str = "cpu",
                checkpoint: Optional[Path] = None, log: Callable[[str], None] = print):
    """``(model, runner)``: the export's eager model and a backend running its graphs.

    ``GraphModel(model, runner)`` is then the codec on that backend; ``device`` picks ONNX Runtime's
    execution provider (TensorRT always runs on CUDA, and the model's bookkeeping moves there too).
    """
    export_dir = Path(export_dir)
    if not (export_dir / "manifest.json").is_file():
        raise FileNotFoundError(f"{export_dir}/manifest.json does not exist: is {export_dir} an hpcm-export directory?")
    model = load_export_model(export_dir, checkpoint)
    if backend == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend

        return model, OnnxRuntimeBackend(export_dir, device=device)
    if backend == "tensorrt":
        from .tensorrt_backend import TensorRTBackend

        runner = TensorRTBackend(export_dir, log=log)
        return model.cuda(), runner
    raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
