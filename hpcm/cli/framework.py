"""What every command shares: one-line reports of project errors, and the logger on the terminal."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Iterator

import click

from hpcm.errors import HPCMError, one_line
from hpcm.log import LOG


class _EchoHandler(logging.Handler):
    """The hpcm logger on the terminal: info on stdout, warnings on stderr as ``notice: ...``.
    click.echo finds the current streams at each call (so click's test runner captures them too)."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            click.echo(f"notice: {message}", err=True)
        else:
            click.echo(message)


def configure_logging() -> None:
    if not any(isinstance(h, _EchoHandler) for h in LOG.handlers):
        LOG.addHandler(_EchoHandler())
    LOG.setLevel(logging.INFO)
    LOG.propagate = False


class _Terminated(SystemExit):
    """A command stopped by SIGTERM or SIGHUP (exit status 128 + the signal's number)."""


@contextlib.contextmanager
def _terminations_as_exits() -> Iterator[None]:
    """SIGTERM and SIGHUP end a command as Ctrl-C does, by an exception, so that every ``with`` block on
    the way out runs: temporary files and folders are removed, locks released (a SIGKILL leaves its
    temporaries to the next write, ``hpcm.files``). A library that turns the exception into an error of
    its own (``torch.onnx.export`` does) is reported as the signal, not as what it broke on the way."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    received: list[int] = []

    def stop(signum: int, frame: object) -> None:
        received.append(signum)
        click.echo(f"Error: stopped by {signal.Signals(signum).name}", err=True)
        raise _Terminated(128 + signum)

    previous = {number: signal.signal(number, stop) for number in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    except Exception as exc:
        if received:
            raise _Terminated(128 + received[0]) from exc
        raise
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


class _ReportsProjectErrors:
    """Turns a project error into click's one-line error exit (after setting up the logger)."""

    def invoke(self, ctx: click.Context):  # noqa: ANN201
        configure_logging()
        try:
            with _terminations_as_exits():
                return super().invoke(ctx)
        except HPCMError as exc:
            raise click.ClickException(one_line(str(exc))) from exc


class ProjectGroup(_ReportsProjectErrors, click.Group):
    """The ``hpcm`` group."""


class ProjectCommand(_ReportsProjectErrors, click.Command):
    """A command that also runs on its own (``hpcm-export``)."""
