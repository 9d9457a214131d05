"""Every error hpcm-rwkv raises on purpose derives from ``HPCMError``.

The message of an ``HPCMError`` is written for the person at the command line: it names the file or
option at fault and says what to do. The CLI catches ``HPCMError`` once (``hpcm.cli.main``) and
prints it as one line (``one_line``); anything else is a bug and keeps its traceback.

The subclasses keep ``ValueError`` or ``RuntimeError`` as a second base where callers of the
library have always been able to catch those.
"""

from __future__ import annotations


def one_line(message: str) -> str:
    """``message`` on one line: line breaks (a compiler's, a library's or a child process's text) become
    "; "."""
    return "; ".join(line.strip() for line in message.strip().splitlines() if line.strip())


class HPCMError(Exception):
    """Root of the project's errors: a problem with input, configuration or environment."""


class ConfigError(HPCMError, ValueError):
    """A setting that cannot be used: an environment variable or option value out of range or malformed."""


class VariantError(HPCMError, ValueError):
    """A variant name or spec that cannot be built (unknown name, bad field, out-of-range size)."""


class CheckpointError(HPCMError, ValueError):
    """A checkpoint that cannot be used, with a message saying why and what to do."""


class ImageError(HPCMError, ValueError):
    """An input image that cannot be coded (unreadable, truncated, unsupported depth, too large)."""


class BitstreamError(HPCMError, ValueError):
    """A bitstream is malformed, corrupt, truncated, or does not belong to the decoding model."""


class CodingError(HPCMError, RuntimeError):
    """Coding cannot proceed: the networks produced non-finite values, or tables and latents disagree."""


class EntropyTableError(HPCMError, ValueError):
    """CDF tables that are missing, inconsistent or not a valid quantised CDF."""


class ArtifactError(HPCMError, ValueError):
    """An export folder that is incomplete, altered, or of an unknown format version."""


class ExportError(HPCMError, RuntimeError):
    """An export that cannot be done or whose result failed a check, with the reason."""


class RunnerError(HPCMError, RuntimeError):
    """A graph runner that cannot start or run here (missing library, plugin, device, profile)."""


class NativeBuildError(HPCMError, RuntimeError):
    """A native library could not be built: no compiler, or the compiler rejected the sources."""


class OutputError(HPCMError, ValueError):
    """An output path that cannot or must not be written (an input, a directory, unwritable)."""


class TrainingError(HPCMError, RuntimeError):
    """Training cannot go on: the loss or the weights became non-finite (nothing is saved)."""


class ClusterError(HPCMError, RuntimeError):
    """Work cannot be spread over workers: Ray is missing or unreachable, or a worker differs from this process."""
