"""The model `allspark suggest` scores with: a run's weights, or its EMA teacher where the run's training state
holds one (the better pseudo-labeller)."""
from __future__ import annotations

from pathlib import Path

import torch

from allspark.config import Config
from allspark.models.segmenter import AllSparkSegmenter
from allspark.models.weights import load_model, resolve_weights
from allspark.run_folder import RunFolder


def load_teacher(checkpoint: str | Path, which: str = "best", device: torch.device | str = "cpu"
                 ) -> tuple[AllSparkSegmenter, Config, Path, str]:
    """(model in eval mode, config, weights file, which model it is). A run's `latest` with an EMA teacher in its
    training state gives the teacher (the better pseudo-labeller); `best` is the model `train.best_of` named."""
    weights = resolve_weights(checkpoint, which)
    model, cfg = load_model(weights, device=device)
    what = "the student"
    folder = RunFolder.of_weights(weights)
    if folder is not None and weights == folder.weights("latest") and folder.state("latest").is_file():
        ema = torch.load(folder.state("latest"), map_location="cpu", weights_only=True).get("ema")
        if ema:
            model.load_state_dict(ema, strict=False)  # the averaged tensors; the rest (memory) stays the student's
            what = "the EMA teacher"
    elif weights.name == "best.safetensors" and cfg.train.best_of == "ema":
        what = "the EMA teacher"
    return model, cfg, weights, what
