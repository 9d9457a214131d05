"""``hpcm`` command line: model tools, codec, export and deployment commands.

Each command module lists its click commands in ``commands``; heavy imports stay inside the
commands so that ``hpcm --help`` is instant (as in Polygraphy). Every project error
(``hpcm.errors.HPCMError``) is reported here, once, as one line; anything else keeps its traceback.
"""

from __future__ import annotations

import importlib

import click

from .framework import ProjectGroup

COMMAND_MODULES = ("hpcm.cli.model_cmds", "hpcm.cli.codec_cmds", "hpcm.cli.export_cmds", "hpcm.cli.deploy_cmds",
                   "hpcm.cli.eval_cmds")


@click.group(cls=ProjectGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hpcm-rwkv")
def main() -> None:
    """HPCM learned image codecs with bi-directional RWKV context models.

    \b
    Model tools:  info, convert, train
    Codec:        encode, decode, inspect, mismatch
    Deployment:   export (also `hpcm-export`), check, build
    Evaluation:   eval, plot, bench
    """


for _name in COMMAND_MODULES:
    for _command in importlib.import_module(_name).commands:
        main.add_command(_command)
