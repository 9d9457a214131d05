"""The codec's entropy tables: the scale table and the quantised CDFs of y and z, validated once.

The seven arrays are the model buffers named in ``hpcm.models.cdf_tables.TABLE_NAMES``. They come
from a model (after ``HPCM.update()``), a checkpoint or an export folder, and are checked before any
coding: a NaN, unordered or wrong-length scale table or a broken CDF row would otherwise code at a
wrong rate or desynchronise the decoder without a word.
"""

from __future__ import annotations

import hashlib
import math
from typing import Mapping, Optional, Union

import numpy as np
import torch

from hpcm.digests import hash_tensors
from hpcm.errors import EntropyTableError
from hpcm.models.cdf_tables import TABLE_NAMES

from .rans import CdfTables, ScaleBuckets

DIGEST_BYTES = 8

ArrayLike = Union[torch.Tensor, np.ndarray]


def _as_tensor(name: str, value: ArrayLike, source: str) -> torch.Tensor:
    """``value`` as a CPU tensor, its dtype kept (the tables digest covers it)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.number):
        raise EntropyTableError(f"{source}: {name} must hold numbers, not {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array))


def _check_kind(name: str, tensor: torch.Tensor, source: str) -> None:
    """Floats for the scale table, integers for the CDF tables (a float CDF would be truncated silently)."""
    floating = tensor.dtype.is_floating_point
    if floating != (name == "scale_table") or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise EntropyTableError(f"{source}: {name} must hold {'floats' if name == 'scale_table' else 'integers'}, "
                                f"not {tensor.dtype}")


def tensor_digest(items: list[tuple[str, torch.Tensor]]) -> bytes:
    """SHA-256 prefix over named tensors (``hash_tensors``: name, dtype, shape and bytes, in the order given)."""
    digest = hashlib.sha256()
    hash_tensors(digest, items)
    return digest.digest()[:DIGEST_BYTES]


class EntropyTables:
    """Validated entropy tables; ``source`` names where they came from in error messages."""

    def __init__(self, arrays: Mapping[str, ArrayLike], source: str = "the model") -> None:
        missing = [n for n in TABLE_NAMES if n not in arrays]
        if missing:
            raise EntropyTableError(f"{source} lacks the entropy table(s) {', '.join(missing)}")
        self.source = source
        self.arrays = {n: _as_tensor(n, arrays[n], source) for n in TABLE_NAMES}
        empty = [n for n, t in self.arrays.items() if t.numel() == 0]
        if empty:
            raise EntropyTableError(f"{source} has no entropy tables ({', '.join(empty)} empty): "
                                    "compute them once with model.update() and save them with the weights")
        for name, tensor in self.arrays.items():
            _check_kind(name, tensor, source)
        try:
            self.y = CdfTables(self.arrays["quantized_cdf_y"], self.arrays["cdf_length_y"], self.arrays["offset_y"])
            self.z = CdfTables(self.arrays["quantized_cdf_z"], self.arrays["cdf_length_z"], self.arrays["offset_z"])
        except EntropyTableError as exc:
            raise EntropyTableError(f"{source}: invalid CDF tables: {exc}") from exc
        self.scale_table = self._checked_scale_table()
        self.buckets = ScaleBuckets(self.scale_table)
        self.digest = tensor_digest([(n, self.arrays[n]) for n in TABLE_NAMES])
        self.min_bits_y = self._min_symbol_bits(self.y)
        self.min_bits_z = self._min_symbol_bits(self.z)

    @classmethod
    def from_model(cls, model: torch.nn.Module, source: Optional[str] = None) -> "EntropyTables":
        """The model's tables; ``source`` (e.g. its checkpoint's path) names them in error messages."""
        return cls({n: getattr(model, n) for n in TABLE_NAMES}, source=source or f"the {model.spec.name} model")

    def _checked_scale_table(self) -> torch.Tensor:
        table = self.arrays["scale_table"]
        if table.dim() != 1 or not table.dtype.is_floating_point:
            raise EntropyTableError(f"{self.source}: scale_table must be a 1-D float tensor, "
                                    f"got {table.dtype} {tuple(table.shape)}")
        if table.numel() != self.y.count:
            raise EntropyTableError(f"{self.source}: scale_table has {table.numel()} entries but there are "
                                    f"{self.y.count} y CDF rows")
        values = table.double()
        if not torch.isfinite(values).all() or (values <= 0).any() or (values[1:] <= values[:-1]).any():
            raise EntropyTableError(f"{self.source}: scale_table must be finite, positive and strictly increasing")
        return table.float()

    @staticmethod
    def _min_symbol_bits(tables: CdfTables) -> float:
        """Cost in bits of the most probable symbol of any row: a lower bound on every symbol."""
        largest = max(int(np.diff(tables.cdf[i, : tables.length[i]].astype(np.int64)).max())
                      for i in range(tables.count))
        return -math.log2(largest / 65536.0)

    def numpy(self) -> dict[str, np.ndarray]:
        """The arrays by name, for storing (``np.savez``)."""
        return {n: t.numpy() for n, t in self.arrays.items()}
