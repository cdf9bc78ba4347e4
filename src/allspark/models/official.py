"""`load_official`: a segmenter holding the weights of a release checkpoint: AllSpark's (ModelBuilder layout) or
UniMatch V2's (DINOv2 `backbone.*` + DPT `head.*`), told apart by their keys."""
from __future__ import annotations

import re
from pathlib import Path

from allspark.errors import ConfigError, ConversionError
from allspark.models.convert import load_exact, read_checkpoint, release_to_ours, unimatch_v2_to_ours
from allspark.models.segmenter import AllSparkSegmenter, model_config

# Key fragments of the published checkpoints' earlier layout (METHODS.md 6).
_EARLIER_LAYOUT = re.compile(r"decoder\.allspark\.embeddings\.|(^|\.)encoder\.layer\.\d+\.attn_norm")


def is_unimatch_v2(state: dict) -> bool:
    """Whether a state dict has UniMatch V2's layout (original DINOv2 blocks, DPT scratch), not AllSpark's."""
    return any(k.startswith(("backbone.blocks.", "head.scratch.")) for k in state)


def load_official(source: str | Path | dict, cfg, entry: str | None = None):
    """A segmenter holding the weights (memory included) of a release checkpoint: a `.pth` path or a
    state dict, with or without `module.` and a `{"model": ...}` wrapper (`entry` picks another, e.g. UniMatch
    V2's `model_ema`). `cfg` (Config, ModelConfig or mapping) must name its encoder, class count and crop size;
    `model.pretrained` is not used."""
    return convert_official(source, cfg, entry)[0]


def convert_official(source: str | Path | dict, cfg, entry: str | None = None):
    """`load_official`, also returning the checkpoint keys left out on purpose (weights the release never reads)."""
    state, where = read_checkpoint(source, entry)
    model_cfg = model_config(cfg)
    if is_unimatch_v2(state):
        if model_cfg.ablation != "none":
            raise ConfigError(f"{where}: a UniMatch V2 checkpoint (DINOv2 + DPT) has no AllSpark module, but the "
                              f"config builds one (model.ablation {model_cfg.ablation!r}); convert it with method=sup",
                              "method", "model.ablation")
        converted, dropped = unimatch_v2_to_ours(state)
        model = AllSparkSegmenter(model_cfg)
        load_exact(model, converted, where)
        return model, dropped
    converted = release_to_ours(state)
    if model_cfg.ablation == "none" and any(key.startswith("allspark.") for key in converted.tensors):
        raise ConfigError(f"{where}: an AllSpark release checkpoint holds the AllSpark module, but the config builds "
                          "none (model.ablation 'none'); convert it with method=allspark", "method", "model.ablation")
    earlier = [k for k in converted.unconsumed if _EARLIER_LAYOUT.search(k)]
    if earlier:
        raise ConversionError(f"{where}: keys such as '{earlier[0]}' come from the earlier layout of the "
                              "checkpoints the authors published, which their released code does not load either "
                              "(docs/METHODS.md 6, authors' issue #3); load_official reads the layout of the released "
                              "model/semseg/allspark.py")
    model = AllSparkSegmenter(model_cfg)
    load_exact(model, converted, where)
    return model, []
