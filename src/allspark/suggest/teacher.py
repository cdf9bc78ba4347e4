"""The model `allspark suggest` scores with: a run's weights, or its EMA teacher where the run's training state
holds one (the better pseudo-labeller)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from allspark.config.schema import Config
from allspark.models.segmenter import AllSparkSegmenter
from allspark.models.weights import load_model
from allspark.runs.checkpoints import ema_weights
from allspark.runs.folder import RunFolder
from allspark.runs.weights_file import resolve_weights


def load_teacher(checkpoint: str | Path, which: str = "best", device: torch.device | str = "cpu"
                 ) -> tuple[AllSparkSegmenter, Config, Path, str]:
    """(model in eval mode, config, weights file, which model it is). A run's `latest` with an EMA teacher in its
    training state gives the teacher (the better pseudo-labeller); `best` is the model `train.best_of` named."""
    weights = resolve_weights(checkpoint, which)
    folder = RunFolder.of_weights(weights)
    teacher = ema_weights(folder.root) if folder is not None and weights == folder.weights("latest") else None
    if teacher is not None:  # the newest complete pair, as resume chooses it
        weights, ema = teacher
        model, cfg = load_model(weights, device=device)
        model.load_state_dict(ema, strict=False)  # the averaged tensors; the rest (memory) stays the student's
        return model, cfg, weights, "the EMA teacher"
    model, cfg = load_model(weights, device=device)
    best_is_ema = folder is not None and weights == folder.weights("best") and cfg.train.best_of == "ema"
    return model, cfg, weights, "the EMA teacher" if best_is_ema else "the student"


def model_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every tensor of the model's state (names, dtypes, shapes, bytes): what the scores come from, however
    the weights file was named, copied or touched."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
