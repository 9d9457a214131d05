"""The package's one logger, ``hpcm``.

Library code reports progress with ``LOG.info`` and what a user should know about their input or
results (a converted image, a recomputed table, another backend) with ``LOG.warning``. Nothing is
printed unless the application configures logging; the CLI does (``hpcm.cli``): info lines on
stdout, warnings on stderr as ``notice: ...``.

A worker process or Ray actor has no such terminal: it collects its notices (``collect_notices``)
and returns them with its result, and the process that prints says them once.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterable, Iterator

LOG = logging.getLogger("hpcm")


class _Collector(logging.Handler):
    def __init__(self, notices: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.notices = notices

    def emit(self, record: logging.LogRecord) -> None:
        self.notices.append(record.getMessage())


@contextlib.contextmanager
def collect_notices() -> Iterator[list[str]]:
    """The notices of the block (``LOG`` warnings and Python warnings), collected into the list it
    yields instead of reaching any other handler."""
    notices: list[str] = []
    collector = _Collector(notices)
    handlers, propagate = LOG.handlers[:], LOG.propagate
    LOG.handlers, LOG.propagate = [collector], False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield notices
        notices.extend(str(w.message) for w in caught)
    finally:
        LOG.handlers, LOG.propagate = handlers, propagate


class OnceEach:
    """Says each distinct notice once: workers return the same ones (a converted image, another
    backend) with many results."""

    def __init__(self) -> None:
        self.said: set[str] = set()

    def say(self, notices: Iterable[str]) -> None:
        for notice in notices:
            if notice not in self.said:
                self.said.add(notice)
                LOG.warning(notice)
