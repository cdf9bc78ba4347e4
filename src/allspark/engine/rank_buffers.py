"""Each rank's own buffers in the training state: DDP leaves BatchNorm statistics per rank (broadcast_buffers=False,
engine/step.py) and the evaluation runs a share on every rank, so a resume exact under torchrun gives every rank its
own back, not rank 0's (the weights file's). The Semantic Memory is the same on every rank and stays out."""
from __future__ import annotations

import torch

from allspark.engine.step import Trainer


def _buffers(trainer: Trainer):
    """(name, buffer) of the student's buffers and the EMA teacher's ("ema." names), less the Semantic Memory's."""
    models = {"": trainer.model, "ema.": trainer.ema.model if trainer.ema else None}
    return ((prefix + name, buffer) for prefix, model in models.items() if model is not None
            for name, buffer in model.named_buffers() if "memory" not in name.split("."))


def rank_buffers(trainer: Trainer) -> dict[str, torch.Tensor]:
    """This rank's own buffers, copied to the CPU for the state file."""
    return {name: buffer.detach().cpu().clone() for name, buffer in _buffers(trainer)}


def load_rank_buffers(trainer: Trainer, saved: dict[str, torch.Tensor]) -> None:
    """Put back this rank's own buffers (from rank_buffers)."""
    with torch.no_grad():
        for name, buffer in _buffers(trainer):
            if name in saved:
                buffer.copy_(saved[name])
