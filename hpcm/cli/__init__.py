"""``hpcm`` command line: model tools, codec, export and deployment commands.

The commands are registered below, by name; heavy imports stay inside the commands so that
``hpcm --help`` is instant (as in Polygraphy). Every project error (``hpcm.errors.HPCMError``) is
reported here, once, as one line; anything else keeps its traceback.
"""

from __future__ import annotations

import click

from .codec_cmds import compress, decode, decompress, encode, inspect_cmd, mismatch
from .deploy_cmds import build, check
from .eval_cmds import bench, eval_cmd, plot
from .export_cmds import export
from .framework import ProjectGroup
from .model_cmds import convert, info, train


@click.group(cls=ProjectGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hpcm-rwkv")
def main() -> None:
    """HPCM learned image codecs with bi-directional RWKV context models.

    \b
    Model tools:  info, convert, train
    Codec:        encode, decode, compress, decompress (folders), inspect, mismatch
    Deployment:   export (also `hpcm-export`), check, build
    Evaluation:   eval, plot, bench
    """


for _command in (info, convert, train, encode, decode, compress, decompress, inspect_cmd, mismatch, export, check,
                 build, eval_cmd, plot, bench):
    main.add_command(_command)
