"""The project's digests, one scheme each: of a file (SHA-256, read in blocks), and of named tensors
(name, dtype, shape and bytes of each: checkpoints, and the weights and tables digests of bitstreams
and export folders).

PyTorch is imported only by ``hash_tensors``, when it is called, so importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
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


def hash_tensors(digest: "hashlib._Hash", items: Iterable[tuple[str, "torch.Tensor"]]) -> None:
    """Feed named tensors to ``digest``: name, dtype, shape and bytes of each, in the order given."""
    import torch

    for name, tensor in items:
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
