"""The model, optimizer, schedule and one step of `allspark pretrain` (engine/step.py's Trainer for pretraining):
masked image modelling, or distillation when a teacher is given."""
from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch.nn.parallel import DistributedDataParallel

from allspark import distributed as dist_utils
from allspark.config.schema import Config
from allspark.distributed import DistInfo
from allspark.encoders.base import checkpoint_layers
from allspark.encoders.registry import build_encoder
from allspark.encoders.specs import encoder_spec
from allspark.engine.optim import build_optimizer, warmup_cosine_schedule
from allspark.errors import NonFiniteLossError
from allspark.models.pretrained import load_pretrained_encoder
from allspark.precision import autocast, resolve_amp
from allspark.pretrain.masking import block_masks, mask_unit
from allspark.pretrain.objectives import FeatureDistiller, MaskedImageModel
from allspark.pretrain.options import PretrainOptions
from allspark.pretrain.teacher import load_teacher, teacher_map


class Pretrainer:
    """`model` (`.encoder` and a head), its AdamW and warm-up + cosine schedule over `options.iters`, and `step`.
    The encoder starts from `model.pretrained` when set (`--init`), else random."""

    def __init__(self, cfg: Config, options: PretrainOptions, info: DistInfo | None = None):
        self.cfg, self.options, self.info = cfg, options, info or DistInfo()
        self.device = self.info.device
        spec = encoder_spec(cfg.model.encoder)
        encoder = build_encoder(spec, cfg.model.pos_embed)
        if cfg.model.pretrained:
            load_pretrained_encoder(encoder, cfg.model.pretrained)
        if cfg.train.activation_checkpointing:
            checkpoint_layers(encoder)
        self.teacher = None
        if options.teacher:
            self.teacher = load_teacher(options.teacher, options.teacher_encoder or spec.name,
                                        cfg.model.pos_embed).to(self.device)
            model = FeatureDistiller(encoder, self.teacher.channels[-1])
        else:
            model = MaskedImageModel(encoder, spec.stride)
        self.unit = mask_unit(spec.stride, options.mask_block)
        self.model = model.to(self.device)
        # AdamW on one group's lr (lr_multi 1): the head is not the segmenter's, nothing calls for a faster one
        train = replace(cfg.train, optimizer="adamw", lr=options.lr, lr_multi=1.0, weight_decay=options.weight_decay)
        self.optimizer = build_optimizer(self.model, train)
        self.warmup = round(options.warmup * options.iters)
        self.scheduler = warmup_cosine_schedule(self.optimizer, options.iters, self.warmup)
        self.amp = resolve_amp(cfg.train.amp, self.device).mode  # pretrain.loop resolves it first; this for callers
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.student = self.model
        if self.info.distributed:  # every weight reaches the last map (a ViT's mask token is frozen: encoders.base)
            self.student = DistributedDataParallel(
                self.model, device_ids=[self.info.local_rank] if self.device.type == "cuda" else None)

    @property
    def iteration(self) -> int:
        return self.scheduler.last_epoch

    def close(self) -> None:
        """Drop the DDP wrapper while the process group is alive (see `distributed.distributed`)."""
        self.student = self.model

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        """This step's loss on `images`: masked blocks drawn from (seed, step, rank), or the teacher's map."""
        if self.teacher is not None:
            with autocast(self.device, self.amp):
                target = teacher_map(self.teacher, images)
                return self.student(images, target)
        seed = dist_utils.derive_seed(self.cfg.train.seed, self.iteration, self.info.rank)
        masks = block_masks(len(images), images.shape[-1], self.unit, self.options.mask_ratio,
                            torch.Generator().manual_seed(seed)).to(self.device)
        with autocast(self.device, self.amp):
            return self.student(images, masks)

    def step(self, batch: dict) -> dict[str, float]:
        """One AdamW step at the schedule's lr; returns the rank-averaged loss and the lr. A NaN or infinite loss
        raises NonFiniteLossError before the weights are touched."""
        lr = self.optimizer.param_groups[0]["lr"]
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(batch["image"].to(self.device, non_blocking=True))
        self.scaler.scale(loss).backward()
        value = (dist_utils.all_reduce_sum(loss.detach().float()) / self.info.world_size).item()
        if not math.isfinite(value):
            raise NonFiniteLossError(f"pretraining loss is {value} at iteration {self.iteration}")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {"loss": value, "lr": lr}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state(self, model_state: dict, state: dict) -> None:
        """Weights, optimizer, scaler, schedule position and this rank's RNG of a checkpoint pair."""
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler = warmup_cosine_schedule(self.optimizer, self.options.iters, self.warmup,
                                                start=state["iteration"])
        self.scaler.load_state_dict(state["scaler"])
        dist_utils.restore_rank_rng(state["rng"], self.info, self.cfg.train.seed, state["iteration"])
