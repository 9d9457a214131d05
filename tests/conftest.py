"""Fixtures several test files share."""

import pytest
import torch

from hpcm.models import build_model
from hpcm.models.variants import VariantSpec

from .hostile import TINY_VARIANT


@pytest.fixture(scope="module")
def phase2():
    """The seeded, untrained phase2 model (with its entropy tables) the export tests compare graphs against."""
    model = build_model("phase2", seed=0).eval()
    model.update()
    return model


@pytest.fixture(scope="module")
def tiny_model():
    """The seeded tiny phase2 of the hostile-input tests (``hostile.TINY_VARIANT``), with its entropy tables."""
    model = build_model(VariantSpec.from_dict(TINY_VARIANT), seed=0).eval()
    model.update()
    return model


@pytest.fixture(scope="module")
def one_thread():
    """PyTorch on one thread for a module: how the folder workers compute by default, and how tiny
    networks run fastest on a shared 2-core machine (0.1 s against 0.7 s a decode)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
