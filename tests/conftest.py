"""Fixtures shared by the test modules."""
import pytest

from inference_helpers import tiny_checkpoint


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A tiny randomly initialised AllSpark checkpoint (see inference_helpers.tiny_checkpoint)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))
