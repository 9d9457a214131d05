"""Fixtures several test files share."""

import pytest

from hpcm.models import build_model


@pytest.fixture(scope="module")
def phase2():
    """The seeded, untrained phase2 model (with its entropy tables) the export tests compare graphs against."""
    model = build_model("phase2", seed=0).eval()
    model.update()
    return model
