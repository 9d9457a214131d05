"""Shared libraries compiled from the package's C++ sources on first use, cached by content.

The rANS coder and the CPU Bi-WKV (and its ONNX Runtime custom op) are small C++ files built with
the system compiler the first time they are needed, into ``hpcm.config.cache_dir()``. The file
name carries a digest of the sources, headers and flags, so a changed source builds anew and
concurrent first uses never load a half-written library. A cached file that no longer loads (empty,
truncated, damaged) is rebuilt. Every failure is a one-line ``NativeBuildError`` saying what to fix:
the cache folder, a compiler that does not exist, or the compiler's first error.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from . import config
from .errors import NativeBuildError
from .log import LOG


def library_path(stem: str, sources: Sequence[Path], headers: Sequence[Path] = (),
                 include_dirs: Sequence[Path] = (), flags: Sequence[str] = ()) -> Path:
    """Where the library built from these sources and flags is cached: ``<cache>/<stem>_<digest>.so``."""
    digest = hashlib.sha256()
    for path in (*sources, *headers):
        digest.update(Path(path).read_bytes())
    digest.update("\0".join([*map(str, include_dirs), *flags]).encode())
    return config.cache_dir() / f"{stem}_{digest.hexdigest()[:16]}.so"


def _loads(path: Path) -> bool:
    try:
        ctypes.CDLL(str(path))
    except OSError as exc:
        LOG.warning(f"the cached native library {path} does not load ({exc}); building it again")
        return False
    return True


def _compiler() -> str:
    cxx = config.cxx_compiler()
    if cxx is None:
        raise NativeBuildError("no C++ compiler found (install g++ or set CXX)")
    if shutil.which(cxx) is None:
        raise NativeBuildError(f"the C++ compiler CXX={cxx} does not exist (install it or set CXX to one that does)")
    return cxx


def _first_error(output: str) -> str:
    """The compiler's first diagnostic ("file:line: error: ..."), else its first line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    return (errors or lines or ["no message"])[0]


def build_shared_library(stem: str, sources: Sequence[Path], headers: Sequence[Path] = (),
                         include_dirs: Sequence[Path] = (), flags: Sequence[str] = ()) -> Path:
    """Compile ``sources`` into ``library_path(...)`` unless a loadable one is there; returns its path."""
    target = library_path(stem, sources, headers, include_dirs, flags)
    if target.is_file() and _loads(target):
        return target
    cxx = _compiler()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(suffix=".so", dir=target.parent)
    except OSError as exc:
        raise NativeBuildError(f"cannot write the native-library cache {target.parent} ({exc.strerror or exc}); set "
                               "HPCM_CACHE_DIR to a writable folder") from exc
    os.close(fd)
    command = [cxx, "-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", *flags,
               *(f"-I{d}" for d in include_dirs), "-o", temporary, *map(str, sources)]
    try:
        try:
            result = subprocess.run(command, capture_output=True, text=True)
        except OSError as exc:
            raise NativeBuildError(f"the C++ compiler {cxx} could not be run ({exc.strerror or exc})") from exc
        if result.returncode != 0:
            raise NativeBuildError(f"building {stem} with {cxx} failed (exit status {result.returncode}): "
                                   f"{_first_error(result.stderr + result.stdout)}")
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target
