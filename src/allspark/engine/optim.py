"""SGD (or UniMatch V2's AdamW) with the two learning-rate groups of METHODS.md 2 and the per-iteration poly
schedule of 5 (a LambdaLR); the warm-up and cosine schedule of `allspark pretrain` (METHODS.md 11)."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from allspark.config.schema import TrainConfig


def param_groups(model: nn.Module, lr: float, lr_multi: float) -> list[dict]:
    """Encoder parameters at `lr`, everything else (AllSpark, decode head) at `lr * lr_multi`."""
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    encoder = [p for p in model.parameters() if id(p) in encoder_ids and p.requires_grad]
    rest = [p for p in model.parameters() if id(p) not in encoder_ids and p.requires_grad]
    return [{"params": encoder, "lr": lr, "name": "encoder"}, {"params": rest, "lr": lr * lr_multi, "name": "head"}]


FUSED_DEVICES = ("cpu", "cuda")  # where torch has the fused AdamW and SGD kernels


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """`train.optimizer`: SGD with momentum, or AdamW with betas 0.9/0.999 (train.momentum unused) as UniMatch V2.

    `train.optimizer_kernel` fused: torch's one-kernel update, 2-3x faster per optimiser step on the CPU
    (benchmarks/speed/bench_optimizer.py); exact: PyTorch's default kernel, as the releases. They differ in the last
    bits, which training amplifies (a weight the loss cannot move, such as a key bias ahead of the softmax, gets a
    gradient of rounding noise that Adam scales to lr-sized steps), so the release comparisons and the results
    committed before the switch (BENCHMARKS.md) come back exactly only with exact."""
    groups = param_groups(model, cfg.lr, cfg.lr_multi)
    device = next(model.parameters()).device.type
    kernel = {"fused": True} if cfg.optimizer_kernel == "fused" and device in FUSED_DEVICES else {}
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay, **kernel)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **kernel)


def poly_factor(iteration: int, total: int, power: float = 0.9) -> float:
    """(1 - i/T)^power, the poly decay of METHODS.md 2."""
    return max(0.0, 1.0 - iteration / total) ** power


def poly_schedule(optimizer: torch.optim.Optimizer, total: int, start: int = 0, timing: str = "before") -> LambdaLR:
    """The poly schedule over `total` iterations: step i runs at each group's `initial_lr` times
    poly_factor(i, total), set before the step (METHODS.md 5) once `scheduler.step()` follows each optimizer step;
    timing "after": at poly_factor(i - 1) from step 1 on (step 0 at the full lr), as UniMatch V2 sets the next step's
    lr after each step from the index of the step just taken. `start` places it at step `start` (a resumed run),
    from the groups' current `initial_lr`."""
    lag = 1 if timing == "after" else 0
    return _schedule(optimizer, lambda step: poly_factor(max(step - lag, 0), total), start)


def warmup_cosine_factor(iteration: int, total: int, warmup: int) -> float:
    """A linear rise over the first `warmup` steps (Goyal et al. 2017), then a cosine decay to 0 at `total`
    (Loshchilov & Hutter 2017, without restarts): the schedule of SimMIM's and MAE's pretraining."""
    if iteration < warmup:
        return (iteration + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (iteration - warmup) / max(1, total - warmup)))


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, total: int, warmup: int, start: int = 0) -> LambdaLR:
    """`warmup_cosine_factor` of each group's `initial_lr`, set before each step; `start` places it at a resumed
    run's step."""
    return _schedule(optimizer, lambda step: warmup_cosine_factor(step, total, warmup), start)


def _schedule(optimizer: torch.optim.Optimizer, factor, start: int) -> LambdaLR:
    """A LambdaLR of factor(step) times each group's `initial_lr` (its lr when first scheduled), at step `start`."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return LambdaLR(optimizer, factor, last_epoch=start - 1)
