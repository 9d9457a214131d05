"""What every command shares: one-line reports of project errors, and the logger on the terminal."""

from __future__ import annotations

import logging

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


class _ReportsProjectErrors:
    """Turns a project error into click's one-line error exit (after setting up the logger)."""

    def invoke(self, ctx: click.Context):  # noqa: ANN201
        configure_logging()
        try:
            return super().invoke(ctx)
        except HPCMError as exc:
            raise click.ClickException(one_line(str(exc))) from exc


class ProjectGroup(_ReportsProjectErrors, click.Group):
    """The ``hpcm`` group."""


class ProjectCommand(_ReportsProjectErrors, click.Command):
    """A command that also runs on its own (``hpcm-export``)."""
