"""`load_official`: a segmenter holding the weights of a checkpoint of the authors' release (ModelBuilder layout)."""
from __future__ import annotations

import re
from pathlib import Path

from allspark.errors import ConversionError
from allspark.models.convert import load_exact, read_checkpoint, release_to_ours
from allspark.models.segmenter import AllSparkSegmenter, model_config

# Key fragments of the published checkpoints' earlier layout (METHODS.md 6).
_EARLIER_LAYOUT = re.compile(r"decoder\.allspark\.embeddings\.|(^|\.)encoder\.layer\.\d+\.attn_norm")


def load_official(source: str | Path | dict, cfg):
    """A segmenter holding the weights (memory included) of a release checkpoint: a `.pth` path or a
    state dict, with or without `module.` and a `{"model": ...}` wrapper. `cfg` (Config, ModelConfig
    or mapping) must name its encoder, class count and crop size; `model.pretrained` is not used."""
    state, where = read_checkpoint(source)
    converted = release_to_ours(state)
    earlier = [k for k in converted.unconsumed if _EARLIER_LAYOUT.search(k)]
    if earlier:
        raise ConversionError(f"{where}: keys such as '{earlier[0]}' come from the earlier layout of the "
                              "checkpoints the authors published, which their released code does not load either "
                              "(docs/METHODS.md 6, authors' issue #3); load_official reads the layout of the released "
                              "model/semseg/allspark.py")
    model = AllSparkSegmenter(model_config(cfg))
    load_exact(model, converted, where)
    return model
