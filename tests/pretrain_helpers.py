"""Shared pieces of the pretrain tests: a tiny image set, a config and the options of a few-step run."""
from __future__ import annotations

from pathlib import Path

import pytest

from allspark.config.loading import load_config
from allspark.pretrain.options import PretrainOptions
from encoder_helpers import TINY, tiny_encoders
from engine_helpers import make_train_data

FAMILY_ENCODERS = ["mit_b0", "dinov2_tiny", "dinov2_reg_tiny", "dinov3_vit_tiny", "dinov3_convnext_test"]


def crop_of(encoder: str) -> int:
    """A config crop this encoder accepts (whole patches for a ViT)."""
    spec = TINY.get(encoder)
    return 4 * spec.patch if spec is not None and spec.is_vit else 64


def pretrain_cfg(run_dir: Path, encoder: str = "mit_b0", *extra: str):
    return load_config("demo", [f"run_dir={run_dir}", f"model.encoder={encoder}", f"model.crop_size={crop_of(encoder)}",
                                "train.log_every=1", "data.workers=0", *extra])


def options(images: Path, iters: int = 4, **kw) -> PretrainOptions:
    return PretrainOptions(images=str(images), iters=iters, batch_size=2, crop=64, **kw)


@pytest.fixture(autouse=True)
def registered():
    """The tiny encoders of encoder_helpers registered for the test (a module imports this fixture to use it)."""
    with tiny_encoders():
        yield


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A small image set with masks, made once per test module."""
    return make_train_data(tmp_path_factory.mktemp("pretrain_data"))
