"""The project's digests, one scheme each: of a file (SHA-256, read in blocks), of a JSON document
(its canonical text: variant specs in checkpoints and rate points, export manifests), and of named
tensors (name, dtype, shape and bytes of each: checkpoints, and the weights and tables digests of
bitstreams and export folders).

PyTorch is imported only by ``hash_tensors``, when it is called, so importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Union

if TYPE_CHECKING:
    import torch


def file_sha256(path: Union[str, Path]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (weights files are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def document_digest(document: object) -> "hashlib._Hash":
    """A SHA-256 fed with ``document`` as canonical JSON (keys sorted): take its ``hexdigest()``, or feed
    it more (``hash_tensors``)."""
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode())


def hash_tensors(digest: "hashlib._Hash", items: Iterable[tuple[str, "torch.Tensor"]]) -> None:
    """Feed named tensors to ``digest``: name, dtype, shape and bytes of each, in the order given."""
    import torch

    for name, tensor in items:
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
