"""Writing outputs safely: checked before the work starts, written atomically, never over an input.

``check_output`` runs before a command does its work, so a bad ``-o`` is found in milliseconds, not
after minutes of coding or training. ``atomic_output`` writes beside the target and renames into
place only on success: an interrupted write never leaves a half file, and an existing file keeps its
permissions. Temporary files a killed process left behind are removed on the next write.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Union

from .errors import OutputError

PathLike = Union[str, Path]
_TEMP_SUFFIX = ".partial"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path: PathLike, inputs: Iterable[PathLike] = ()) -> Path:
    """``path`` if it can be written as a regular file, else an OutputError saying why."""
    path = Path(path)
    for source in inputs:
        if _same_file(path, Path(source)) or path.resolve() == Path(source).resolve():
            raise OutputError(f"-o {path} is also an input: refusing to overwrite it (choose another output)")
    if path.exists() or path.is_symlink():
        mode = path.stat().st_mode if path.exists() else 0
        if path.is_dir():
            raise OutputError(f"-o {path} is a folder; give a file name")
        if path.exists() and not stat.S_ISREG(mode):
            raise OutputError(f"-o {path} exists and is not a regular file (a device, pipe or socket): "
                              "refusing to replace it")
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise OutputError(f"the folder {directory} for -o {path} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into {directory} (permission denied or read-only)")
    return path


@contextlib.contextmanager
def atomic_output(path: PathLike, inputs: Iterable[PathLike] = ()) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it only when the block succeeds."""
    path = check_output(path, inputs)
    directory = path.parent if str(path.parent) else Path(".")
    for stale in directory.glob(f".{path.name}.*{_TEMP_SUFFIX}"):
        stale.unlink(missing_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    os.close(fd)
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)  # keep an existing file's permissions
    else:  # mkstemp creates 0600; give the result the permissions a plain open() would have
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(tmp, mode)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

