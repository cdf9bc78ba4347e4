"""`build_model`: the segmenter of a config, its encoder loaded from `model.pretrained` when that is set."""
from __future__ import annotations

from collections.abc import Mapping

from allspark.config.schema import Config, ModelConfig
from allspark.models.pretrained import load_pretrained_encoder
from allspark.models.segmenter import AllSparkSegmenter, model_config


def build_model(cfg: Config | ModelConfig | Mapping) -> AllSparkSegmenter:
    """The segmenter for `cfg`, with the pretrained encoder weights of `model.pretrained` when set."""
    mcfg = model_config(cfg)
    model = AllSparkSegmenter(mcfg)
    if mcfg.pretrained:
        load_pretrained_encoder(model.encoder, mcfg.pretrained)
    return model
