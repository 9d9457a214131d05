"""Shared libraries compiled from the package's C++ sources on first use, cached by content.

The rANS coder and the CPU Bi-WKV (and its ONNX Runtime custom op) are small C++ files built with
the system compiler the first time they are needed, into ``hpcm.config.cache_dir()``. The file
name carries a digest of the sources, headers and flags, so a changed source builds anew and
concurrent first uses never load a half-written library.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from . import config
from .errors import NativeBuildError


def build_shared_library(stem: str, sources: Sequence[Path], headers: Sequence[Path] = (),
                         include_dirs: Sequence[Path] = (), flags: Sequence[str] = ()) -> Path:
    """Compile ``sources`` into ``<cache>/<stem>_<digest>.so`` unless it exists; returns its path."""
    digest = hashlib.sha256()
    for path in (*sources, *headers):
        digest.update(Path(path).read_bytes())
    digest.update("\0".join([*map(str, include_dirs), *flags]).encode())
    target = config.cache_dir() / f"{stem}_{digest.hexdigest()[:16]}.so"
    if target.exists():
        return target
    cxx = config.cxx_compiler()
    if cxx is None:
        raise NativeBuildError(f"no C++ compiler found to build {stem} (install g++ or set CXX)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    command = [cxx, "-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", *flags,
               *(f"-I{d}" for d in include_dirs), "-o", temporary, *map(str, sources)]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise NativeBuildError(f"building {stem} failed:\n{' '.join(command)}\n{result.stderr.strip()}")
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target
