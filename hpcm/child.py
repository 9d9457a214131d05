"""Work done in a fresh Python process, and its failures reported as one line.

Some measurements need a process of their own (``hpcm bench``: each configuration's peak memory is
its process's). ``run_child(module, payload, what)`` runs ``python -m module`` with ``payload`` as
JSON on stdin; the module's ``__main__`` calls ``child_main(function)``, which answers with one JSON
line on stdout, the result or the error. The parent then has one line to report whatever happened
in the child:

* a project error there (``HPCMError``: a bad setting, too little memory for the size asked for)
  arrives as its own message;
* a crash (a bug, or the process killed, e.g. by the out-of-memory killer) arrives as its last line
  or its signal, and the child's whole output is kept in a log file the message names.

The child's notices (``notice: ...`` lines) pass through to the parent's stderr as they are.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import tempfile
from typing import Callable

from .errors import HPCMError, one_line
from .log import LOG

_RESULT_KEY = "hpcm-child-result"
_ERROR_KEY = "hpcm-child-error"


class ChildError(HPCMError, RuntimeError):
    """Work run in a child process failed; the message is one line saying how."""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _answer(stdout: str) -> dict:
    """The child's JSON answer (its last stdout line), or an empty dict when there is none."""
    try:
        answer = json.loads(_last_line(stdout))
    except json.JSONDecodeError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _keep_log(what: str, stderr: str) -> str:
    """Where the output of a crashed child is kept (the message names it)."""
    try:
        with tempfile.NamedTemporaryFile("w", prefix="hpcm-child-", suffix=".log", delete=False) as log:
            log.write(f"{what}\n{stderr}")
    except OSError:
        return ""
    return f" (its output: {log.name})"


def run_child(module: str, payload: dict, what: str) -> dict:
    """``child_main``'s result for ``payload`` from a fresh ``python -m module``; ``what`` names the
    work in the one-line ``ChildError`` raised when it fails."""
    process = subprocess.run([sys.executable, "-m", module], input=json.dumps(payload), capture_output=True,
                             text=True)
    notices = [line for line in process.stderr.splitlines() if line.startswith("notice: ")]
    if notices:
        sys.stderr.write("\n".join(notices) + "\n")
    answer = _answer(process.stdout)
    if process.returncode == 0 and _RESULT_KEY in answer:
        return answer[_RESULT_KEY]
    if _ERROR_KEY in answer:
        raise ChildError(f"{what}: {answer[_ERROR_KEY]}")
    if process.returncode < 0:
        name = signal.Signals(-process.returncode).name
        killed = " (out of memory?)" if name == "SIGKILL" else ""
        raise ChildError(f"{what}: its process was killed by {name}{killed}{_keep_log(what, process.stderr)}")
    raise ChildError(f"{what} failed: {_last_line(process.stderr)}{_keep_log(what, process.stderr)}")


class _Notices(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            sys.stderr.write(f"notice: {record.getMessage()}\n")


def child_main(function: Callable[[dict], dict]) -> None:
    """The child's side of ``run_child``: ``function(payload)`` answered as one JSON line on stdout."""
    LOG.addHandler(_Notices())
    LOG.propagate = False
    try:
        result = function(json.loads(sys.stdin.read()))
    except HPCMError as exc:
        sys.stdout.write(json.dumps({_ERROR_KEY: one_line(str(exc))}) + "\n")
        sys.exit(1)
    except MemoryError:
        sys.stdout.write(json.dumps({_ERROR_KEY: "not enough memory"}) + "\n")
        sys.exit(1)
    # anything else is a bug: its traceback goes to stderr, which the parent keeps in a log
    sys.stdout.write(json.dumps({_RESULT_KEY: result}) + "\n")
