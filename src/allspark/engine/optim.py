"""SGD with the two learning-rate groups of spec 2 and the per-iteration poly schedule of spec 5."""
from __future__ import annotations

import torch
from torch import nn

from allspark.config import TrainConfig


def param_groups(model: nn.Module, lr: float, lr_multi: float) -> list[dict]:
    """Encoder parameters at `lr`, everything else (AllSpark, decode head) at `lr * lr_multi`."""
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    encoder = [p for p in model.parameters() if id(p) in encoder_ids and p.requires_grad]
    rest = [p for p in model.parameters() if id(p) not in encoder_ids and p.requires_grad]
    return [{"params": encoder, "lr": lr, "base_lr": lr, "name": "encoder"},
            {"params": rest, "lr": lr * lr_multi, "base_lr": lr * lr_multi, "name": "head"}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    return torch.optim.SGD(param_groups(model, cfg.lr, cfg.lr_multi), lr=cfg.lr,
                           momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def poly_factor(iteration: int, total: int, power: float = 0.9) -> float:
    """(1 - i/T)^power, the poly decay of spec 2."""
    return max(0.0, 1.0 - iteration / total) ** power


def set_poly_lr(optimizer: torch.optim.Optimizer, iteration: int, total: int) -> float:
    """Set every group's lr for iteration `iteration` BEFORE its step (spec 5); returns the encoder lr."""
    factor = poly_factor(iteration, total)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]
