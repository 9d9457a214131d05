"""Hostile inputs for ``tests/test_hostile_*.py`` and the harness that runs the CLI on them.

Every case checks the same things: a clear error on one line (or a notice), no traceback, nothing
lost (inputs and existing outputs unchanged, no temporary files left) and, for the cases that could
allocate without bound, a bounded memory peak: those run in a subprocess under an address-space
limit (``MEMORY_LIMIT``), so unbounded memory fails the test instead of the CI machine.

The model is a tiny phase2 (M = N = 16, written as a ``--variant`` JSON file) wherever the case
allows, so that the networks cost seconds.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from click.testing import CliRunner, Result
from PIL import Image

from hpcm.cli import main

MEMORY_LIMIT = 3 << 30  # bytes of address space for the subprocess cases
TINY_VARIANT = {
    "name": "tiny",
    "description": "phase2 cells at M = N = 16 (fast hostile-input tests)",
    "cells": [{"kind": "rwkv", "hidden_rate": 2}, {"kind": "rwkv", "hidden_rate": 3},
              {"kind": "rwkv", "hidden_rate": 4}],
    "M": 16,
    "N": 16,
}

# The child's own peak is VmHWM of /proc/self/status: ru_maxrss would keep the parent's peak across exec.
_CHILD = """
import re, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    from hpcm.cli import main
    main(sys.argv[2:], prog_name="hpcm")
finally:
    with open("/proc/self/status") as status:
        peak = re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1)
    sys.stderr.write("\\npeak_kb=%s\\n" % peak)
"""


def write_variant(folder: Path, name: str = "tiny.json", **changes: object) -> Path:
    path = folder / name
    path.write_text(json.dumps({**TINY_VARIANT, **changes}))
    return path


def write_image(path: Path, height: int, width: int, seed: int = 0, **save_options: object) -> Path:
    """A smooth random 8-bit RGB image (any format PIL writes from the suffix)."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.arange(height), np.arange(width))[..., None] * np.array([1, 2, 3])
    pixels = (ramp + rng.integers(0, 32, (height, width, 3))) % 256
    Image.fromarray(pixels.astype(np.uint8)).save(path, **save_options)
    return path


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(path: Path, width: int, height: int) -> Path:
    """A 1-bit black PNG of width x height pixels: a few hundred KB that decode to width*height bytes."""
    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    block = row * max(1, (1 << 22) // len(row))
    rows_per_block = len(block) // len(row)
    parts, left = [], height
    while left > 0:
        n = min(left, rows_per_block)
        parts.append(compressor.compress(block[: n * len(row)]))
        left -= n
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", b"".join(parts))
                     + _png_chunk(b"IEND", b""))
    return path


def png_with_short_data(path: Path, height: int, width: int) -> Path:
    """A well-formed PNG (every chunk and CRC valid) whose compressed pixel data holds half the rows."""
    pixels = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    raw = b"".join(b"\x00" + pixels[i].tobytes() for i in range(height // 2))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(raw))
                     + _png_chunk(b"IEND", b""))
    return path


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """name -> (SHA-256, mode) of every file under ``folder``: compare before and after a case."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders an interrupted or failed write left behind."""
    return [p.name for p in folder.rglob("*") if ".partial" in p.name or p.suffix == ".tmp"]


def write_manifest(folder: Path, raw: dict) -> None:
    """Write ``raw`` as the export manifest of ``folder`` with its own digest recomputed, as a forger
    would: what the manifest says is then checked, not only that it was edited."""
    from hpcm.digests import document_digest
    from hpcm.export.artifact import MANIFEST_DIGEST, MANIFEST_NAME

    body = {key: value for key, value in raw.items() if key != MANIFEST_DIGEST}
    (folder / MANIFEST_NAME).write_text(json.dumps({**body, MANIFEST_DIGEST: document_digest(body).hexdigest()}))


def cli(*args: object) -> Result:
    """Run ``hpcm`` in this process; an exception other than the exit is a bug (it shows a traceback)."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"uncaught {type(result.exception).__name__}: {result.exception}\n{result.output}"
    return result


def assert_clean_error(output: str, exit_code: int, pattern: str, usage: bool = False) -> str:
    """The command failed with one ``Error:`` line matching ``pattern`` and no traceback; returns the line."""
    assert exit_code == (2 if usage else 1), f"exit code {exit_code}:\n{output}"
    assert "Traceback" not in output, output
    assert "Error:" in output, output
    message = output[output.index("Error:"):].strip()
    assert "\n" not in message, f"the error takes more than one line:\n{message}"
    assert re.search(pattern, message), f"{pattern!r} not in {message!r}"
    return message


@dataclass
class Limited:
    """A CLI run in a memory-limited subprocess."""

    returncode: int
    output: str
    peak_mb: float

    def clean_error(self, pattern: str, usage: bool = False) -> str:
        return assert_clean_error(self.output, self.returncode, pattern, usage)


def run_limited(args: Sequence[object], env: Optional[dict] = None, timeout: float = 240,
                limit: int = MEMORY_LIMIT) -> Limited:
    """``hpcm ARGS`` in a subprocess under RLIMIT_AS = ``limit``; its peak resident memory is measured (Linux)."""
    import os

    result = subprocess.run([sys.executable, "-c", _CHILD, str(limit), *map(str, args)], capture_output=True,
                            text=True, timeout=timeout, env={**os.environ, **(env or {})})
    stderr = result.stderr
    match = re.search(r"\npeak_kb=(\d+)\n?$", stderr)
    peak = int(match.group(1)) / 1024 if match else float("nan")
    if match:
        stderr = stderr[: match.start()]
    return Limited(result.returncode, result.stdout + stderr, peak)
