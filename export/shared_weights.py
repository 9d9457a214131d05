"""One weights file for all graphs of an export, each distinct tensor stored once.

HPCM's ten step graphs and the forward graph all carry the same prior networks: saved one file per
graph, a phase2 export repeats them about a dozen times (1.3 GB with the forward graph). Here every
initializer of at least ``MIN_EXTERNAL_BYTES`` moves into ``weights.bin`` as ONNX external data,
addressed by the SHA-256 of its bytes, so a tensor several graphs share is written once. ONNX
Runtime, ``onnx.load`` and TensorRT's ONNX parser all read external data from the path given
relative to the graph file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# Tensors below this stay inside their graph: the bookkeeping would outweigh them.
MIN_EXTERNAL_BYTES = 1024
# Offsets are page aligned so runtimes may memory-map tensors in place.
ALIGNMENT = 4096


class SharedWeights:
    """Writes the weights file ``path`` (starting it empty) and points graphs' initializers into it;
    graphs must be in the same folder (external data is addressed relative to the graph file)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.write_bytes(b"")
        self.size = 0
        self.graph_bytes = 0  # what the graphs would hold without sharing
        self._offsets: dict[str, tuple[int, int]] = {}

    def externalize(self, graph_path: Path) -> str:
        """Move ``graph_path``'s large initializers into the shared file; rewrite the graph in place.

        Returns a digest of exactly the weights the graph references (so two graphs with equal
        structure but different weights never share an engine-cache key).
        """
        import onnx

        model = onnx.load(str(graph_path), load_external_data=False)
        digest = hashlib.sha256()
        moved_bytes = 0
        with open(self.path, "ab") as store:
            for tensor in model.graph.initializer:
                if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.raw_data) < MIN_EXTERNAL_BYTES:
                    continue
                data = tensor.raw_data
                key = hashlib.sha256(data).hexdigest()
                if key not in self._offsets:
                    padding = (-self.size) % ALIGNMENT
                    store.write(b"\0" * padding + data)
                    self._offsets[key] = (self.size + padding, len(data))
                    self.size += padding + len(data)
                offset, length = self._offsets[key]
                digest.update(f"{tensor.name}:{key};".encode())
                tensor.ClearField("raw_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
                del tensor.external_data[:]
                for field, value in (("location", self.path.name), ("offset", offset), ("length", length)):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = field, str(value)
                moved_bytes += length
        self.graph_bytes += moved_bytes
        temporary = graph_path.with_suffix(".onnx.tmp")
        temporary.write_bytes(model.SerializeToString())
        os.replace(temporary, graph_path)
        return digest.hexdigest()
