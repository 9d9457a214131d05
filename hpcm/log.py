"""The package's one logger, ``hpcm``.

Library code reports progress with ``LOG.info`` and what a user should know about their input or
results (a converted image, a recomputed table, another backend) with ``LOG.warning``. Nothing is
printed unless the application configures logging; the CLI does (``hpcm.cli``): info lines on
stdout, warnings on stderr as ``notice: ...``.
"""

from __future__ import annotations

import logging

LOG = logging.getLogger("hpcm")
