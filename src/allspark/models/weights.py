"""Rebuilding the model from our weights format (allspark.runs.weights_file): the file holds the config and every
weight, so one path is enough."""
from __future__ import annotations

from pathlib import Path

import torch

from allspark.models.segmenter import AllSparkSegmenter
from allspark.runs.weights_file import read_weights, resolve_weights


def load_model(path_or_run: str | Path, which: str = "best", device: str | torch.device = "cpu"):
    """Rebuild the model from a weights file or run directory; returns (model in eval mode, cfg). The file holds
    every weight, so `model.pretrained` is not read."""
    state, cfg = read_weights(resolve_weights(path_or_run, which))
    model = AllSparkSegmenter(cfg.model)
    model.load_state_dict(state)
    return model.to(device).eval(), cfg
