"""The codec's entropy tables: the scale table and the quantised CDFs of y and z, validated once.

The seven arrays are the model buffers named in ``hpcm.models.cdf_tables.TABLE_NAMES``. They come
from a model (after ``HPCM.update()``), a checkpoint or an export folder, and are checked before any
coding: a NaN, unordered or wrong-length scale table or a broken CDF row would otherwise code at a
wrong rate or desynchronise the decoder without a word.
"""

from __future__ import annotations

import hashlib
import math
from typing import Mapping, Union

import numpy as np
import torch

from hpcm.errors import EntropyTableError
from hpcm.models.cdf_tables import TABLE_NAMES

from .rans import CdfTables

DIGEST_BYTES = 8

ArrayLike = Union[torch.Tensor, np.ndarray]


def _as_tensor(value: ArrayLike) -> torch.Tensor:
    return value.detach().cpu() if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))


def tensor_digest(items: list[tuple[str, torch.Tensor]]) -> bytes:
    """SHA-256 prefix over named tensors (name, dtype, shape and bytes, in the order given)."""
    h = hashlib.sha256()
    for name, t in items:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()[:DIGEST_BYTES]


class EntropyTables:
    """Validated entropy tables; ``source`` names where they came from in error messages."""

    def __init__(self, arrays: Mapping[str, ArrayLike], source: str = "the model") -> None:
        missing = [n for n in TABLE_NAMES if n not in arrays]
        if missing:
            raise EntropyTableError(f"{source} lacks the entropy table(s) {', '.join(missing)}")
        self.source = source
        self.arrays = {n: _as_tensor(arrays[n]) for n in TABLE_NAMES}
        empty = [n for n, t in self.arrays.items() if t.numel() == 0]
        if empty:
            raise EntropyTableError(f"{source} has no entropy tables ({', '.join(empty)} empty): "
                                    "compute them once with model.update() and save them with the weights")
        try:
            self.y = CdfTables(self.arrays["quantized_cdf_y"], self.arrays["cdf_length_y"], self.arrays["offset_y"])
            self.z = CdfTables(self.arrays["quantized_cdf_z"], self.arrays["cdf_length_z"], self.arrays["offset_z"])
        except EntropyTableError as exc:
            raise EntropyTableError(f"{source}: invalid CDF tables: {exc}") from exc
        self.scale_table = self._checked_scale_table()
        self.digest = tensor_digest([(n, self.arrays[n]) for n in TABLE_NAMES])
        self.min_bits_y = self._min_symbol_bits(self.y)
        self.min_bits_z = self._min_symbol_bits(self.z)

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> "EntropyTables":
        return cls({n: getattr(model, n) for n in TABLE_NAMES}, source=f"the {model.spec.name} model")

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
