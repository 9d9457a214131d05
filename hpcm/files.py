"""Writing outputs safely: checked before the work starts, written atomically, never over an input,
never over another output of the same command, one writer at a time.

``check_outputs`` runs before a command does its work, so a bad ``-o`` is found in milliseconds, not
after minutes of coding or training: every file the command will write (also those it derives from
``-o``, such as ``OUT.csv`` beside ``OUT.json``) must be writable, none may be one of its inputs
(also not through a link, nor a file of an input folder), and no two may be the same file.
``atomic_output`` writes beside the target and renames into place only on success: an interrupted
write never leaves a half file, and an existing file keeps its permissions. ``exclusive`` lets one
process at a time write a target whose writing takes long or appends (an eval's row journal, an
export folder); a second one is refused at once rather than mixing its work into the first's.

Temporary files and folders carry the id of the process writing them (``.NAME.PID.XXXX.partial``);
one whose process is gone (a killed run) is removed by the next write into the same folder, one
still being written is left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Optional, Sequence, Union

from .errors import OutputError

PathLike = Union[str, Path]
_TEMP_SUFFIX = ".partial"
_STALE = re.compile(rf"^\..+\.(\d+)\.[^.]+{re.escape(_TEMP_SUFFIX)}$")  # .NAME.PID.XXXX.partial


class Output(NamedTuple):
    """A file a command writes: ``option`` names it on the command line; ``role`` says what it holds
    where one option names several files (``OUT.csv`` beside ``-o OUT.json``)."""

    path: Path
    option: str = "-o"
    role: str = ""

    def __str__(self) -> str:
        return f"{self.role} {self.path}" if self.role else f"{self.option} {self.path}"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _same_path(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file, existing or not (also through links)."""
    return _same_file(a, b) or a.resolve() == b.resolve()


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _is_input(path: Path, source: Path) -> bool:
    """``path`` is the existing input ``source``, or an existing file inside the input folder ``source``
    (a source that does not exist is not read: a variant name, or a file a later check reports)."""
    if not source.exists():
        return False
    if _same_path(path, source):
        return True
    if source.is_dir() and path.exists():
        return source.resolve() in path.resolve().parents
    return False


def check_output(path: PathLike, inputs: Iterable[Optional[PathLike]] = (), option: str = "-o") -> Path:
    """``path`` if it can be written as a regular file, else an OutputError naming ``option`` and saying why.

    ``inputs``: files and folders the command reads (None entries, and names of no file such as a
    variant's, are ignored); the output must be none of them, nor an existing file in one of the
    folders, also not through a link."""
    path = Path(path)
    for source in inputs:
        if source is not None and _is_input(path, Path(source)):
            where = "" if _same_path(path, Path(source)) else f" (a file of the input folder {source})"
            raise OutputError(f"{option} {path} is also an input{where}: refusing to overwrite it (choose another "
                              "output)")
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


def check_outputs(outputs: Sequence[Output], inputs: Iterable[Optional[PathLike]] = ()) -> list[Path]:
    """Every file a command writes, checked before its work starts: each as ``check_output``, and no
    two the same file (which would leave only the last one written)."""
    inputs = list(inputs)
    checked = [check_output(output.path, inputs, output.option) for output in outputs]
    for i, first in enumerate(outputs):
        for second in outputs[i + 1:]:
            if _same_path(first.path, second.path):
                raise OutputError(f"{first} and {second} would be the same file, and one would overwrite the "
                                  f"other: choose another {second.option}")
    return checked


# ------------------------------------------------------------------------------- temporaries
def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(directory: Path) -> None:
    """Temporary files and folders in ``directory`` left by processes that no longer run."""
    for candidate in directory.glob(f".*{_TEMP_SUFFIX}"):
        match = _STALE.match(candidate.name)
        if match and int(match.group(1)) != os.getpid() and not _process_alive(int(match.group(1))):
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    candidate.unlink()


def temporary_folder(target: Path) -> Path:
    """A new empty folder beside ``target``, named for this process (removed by a later write if this
    process dies before it is renamed into place)."""
    directory = target.parent if str(target.parent) else Path(".")
    remove_stale_temporaries(directory)
    try:
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=_TEMP_SUFFIX, dir=directory))
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {_reason(exc)}") from exc


def set_aside_name(target: Path) -> Path:
    """Where an existing ``target`` is moved while its replacement is renamed into place (this
    process's name, so that it counts as a temporary of this process)."""
    return target.with_name(f".{target.name}.{os.getpid()}.old{_TEMP_SUFFIX}")


@contextlib.contextmanager
def atomic_output(path: PathLike, inputs: Iterable[Optional[PathLike]] = (), option: str = "-o") -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it only when the block succeeds."""
    path = check_output(path, inputs, option)
    directory = path.parent if str(path.parent) else Path(".")
    remove_stale_temporaries(directory)
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


# ------------------------------------------------------------------------------------- locks
def lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def exclusive(target: PathLike, option: str = "-o") -> Iterator[None]:
    """Hold the write lock of ``target`` for the block, or refuse at once when another process holds it.

    The lock is ``flock`` on ``.NAME.lock`` beside the target: the kernel releases it when its
    process ends, however it ends, so a killed run never blocks the next one. The file is removed
    when the block ends; a process that opened it just before then finds it replaced and tries again."""
    target = Path(target)
    lock = lock_path(target)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot write {target}: {_reason(exc)} ({lock})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise OutputError(f"{option} {target} is being written by another process (pid {holder}): wait for it "
                              f"to finish, or choose another {option}") from None
        try:
            current = os.stat(lock).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)  # the holder removed this file as we opened it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)
