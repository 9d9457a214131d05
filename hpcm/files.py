"""Writing outputs safely: checked before the work starts, written atomically, never over an input.

``check_output`` runs before a command does its work, so a bad ``-o`` is found in milliseconds, not
after minutes of coding or training. ``atomic_output`` writes beside the target and renames into
place only on success: an interrupted write never leaves a half file, and an existing file keeps its
permissions. A temporary file carries the id of the process writing it; one whose process is gone (a
killed run) is removed by the next write of the same target, one still being written is left alone.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

from .errors import OutputError

PathLike = Union[str, Path]
_TEMP_SUFFIX = ".partial"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def check_output(path: PathLike, inputs: Iterable[Optional[PathLike]] = (), option: str = "-o") -> Path:
    """``path`` if it can be written as a regular file, else an OutputError naming ``option`` and saying why.

    ``inputs``: files the command reads (None entries are ignored); the output must be none of them,
    also not through a link."""
    path = Path(path)
    for source in inputs:
        if source is not None and (_same_file(path, Path(source)) or path.resolve() == Path(source).resolve()):
            raise OutputError(f"{option} {path} is also an input: refusing to overwrite it (choose another output)")
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; give a file name")
    if path.exists() and not stat.S_ISREG(path.stat().st_mode):
        raise OutputError(f"{option} {path} exists and is not a regular file (a device, pipe or socket): "
                          "refusing to replace it")
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise OutputError(f"the folder {directory} for {option} {path} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into {directory} (permission denied or read-only), given by {option} {path}")
    return path


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_temporaries(directory: Path, name: str) -> None:
    """Temporary files of ``name`` left by processes that no longer run."""
    pattern = re.compile(rf"^\.{re.escape(name)}\.(\d+)\..*{re.escape(_TEMP_SUFFIX)}$")
    for candidate in directory.glob(f".{glob.escape(name)}.*{_TEMP_SUFFIX}"):
        match = pattern.match(candidate.name)
        if match and int(match.group(1)) != os.getpid() and not _process_alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                candidate.unlink()


@contextlib.contextmanager
def atomic_output(path: PathLike, inputs: Iterable[Optional[PathLike]] = (), option: str = "-o") -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it only when the block succeeds."""
    path = check_output(path, inputs, option)
    directory = path.parent if str(path.parent) else Path(".")
    _remove_stale_temporaries(directory, path.name)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.{os.getpid()}.", suffix=_TEMP_SUFFIX)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from exc
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
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
