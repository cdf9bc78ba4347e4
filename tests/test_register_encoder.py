"""A family a user writes joins through `allspark.register_encoder`: its names pass config validation, the segmenter
builds it from its spec, and a spec whose family nobody registered is refused with the key named."""
import pytest
import torch
from torch import nn

import allspark
from allspark.config.loading import config_from_dict
from allspark.encoders.base import Encoder
from allspark.encoders.registry import FAMILIES, build_encoder
from allspark.encoders.specs import ENCODERS, EncoderSpec
from allspark.errors import ConfigError
from allspark.models import build_model

TOY = EncoderSpec("toy_cnn", "toy", (8, 16, 24, 32))


class ToyEncoder(Encoder):
    """Four strided convs: maps at strides 4, 8, 16, 32 with the spec's widths."""

    family = "toy"

    def __init__(self, spec: EncoderSpec, pos_embed: str = "release"):
        super().__init__(spec, pos_embed)
        widths = (3,) + spec.channels
        self.stages = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 3, stride=4 if i == 0 else 2, padding=1)
                                    for i in range(4))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        feats, x = [], images
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


@pytest.fixture
def toy():
    allspark.register_encoder(ToyEncoder, TOY)
    try:
        yield TOY
    finally:
        ENCODERS.pop(TOY.name)
        FAMILIES.pop(ToyEncoder.family)


def test_a_registered_family_is_validated_and_built_by_the_segmenter(toy):
    cfg = config_from_dict({"method": "allspark", "model": {"encoder": "toy_cnn", "num_classes": 3, "crop_size": 64}})
    model = build_model(cfg).eval()
    assert isinstance(model.encoder, ToyEncoder) and model.encoder.spec is toy
    assert model.allspark.memory.queue.shape[-1] == 2 * 2  # the spec's feature grid: 64 / 32 per side
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3, 64, 64)


def test_register_encoder_is_the_public_one():
    from allspark.encoders.registry import register_encoder
    assert allspark.register_encoder is register_encoder


def test_a_spec_of_another_family_is_refused():
    with pytest.raises(ValueError, match="toy_cnn"):
        allspark.register_encoder(ToyEncoder, EncoderSpec("toy_cnn", "mit", (8, 16, 24, 32)))
    assert "toy_cnn" not in ENCODERS


def test_a_family_nobody_registered_names_the_key():
    with pytest.raises(ConfigError, match="family 'toy'") as err:
        build_encoder(TOY)
    assert err.value.keys[0] == "model.encoder"


def test_every_family_of_the_table_is_registered():
    assert {spec.family for spec in ENCODERS.values()} <= set(FAMILIES)
    assert all(FAMILIES[name].family == name for name in FAMILIES)
