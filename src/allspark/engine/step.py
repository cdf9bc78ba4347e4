"""One training step for the three methods (METHODS.md 2): SupBaseline, SemiBaseline and AllSpark.

Per iteration: teacher pass (eval mode, no gradient) on the unlabeled batch -> pseudo-labels and the
logits that feed grouping; student pass (train mode) on [labeled; unlabeled]; (CE_l + CE_u) / 2;
SGD with the poly lr set before the step. The `recipe` section changes the teacher, the student's unlabeled views
and passes and the unlabeled term (engine/recipes.py); `train.optimizer` and `train.lr_timing` give UniMatch V2's
AdamW and lr order. The run around the steps (epochs, evaluation, checkpoints) is engine/loop.py.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from allspark import distributed as dist_utils
from allspark.config.schema import Config
from allspark.distributed import DistInfo
from allspark.encoders.base import checkpoint_layers
from allspark.engine.losses import labeled_loss
from allspark.engine.optim import build_optimizer, poly_schedule
from allspark.engine.recipes import (EmaTeacher, complementary_masks, confident_share, pseudo_label_loss,
                                     rampup_factor, student_views)
from allspark.errors import ConfigError, NonFiniteLossError
from allspark.models import build_model
from allspark.precision import autocast, resolve_amp
from allspark.runs.run_config import config_diff
from allspark.runs.weights_file import read_weights


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def micro_batches(batch: dict | None, count: int) -> list[dict | None]:
    """`batch` cut into `count` consecutive parts along the batch dimension (None stays None, count times)."""
    if batch is None:
        return [None] * count
    parts = {k: v.tensor_split(count) if torch.is_tensor(v) else [v] * count for k, v in batch.items()}
    return [{k: v[i] for k, v in parts.items()} for i in range(count)]


class Trainer:
    """The model, optimizer, poly schedule over `total` iterations and one `step`; engine.loop adds loaders,
    checkpoints, evaluation and logs."""

    def __init__(self, cfg: Config, info: DistInfo | None = None, *, total: int):
        self.cfg = cfg
        self.info = info or DistInfo()
        self.device = self.info.device
        model = build_model(cfg)
        if cfg.train.activation_checkpointing:
            checkpoint_layers(model.encoder)
        if self.info.distributed and self.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(self.model, cfg.train)
        self.total = total
        self.scheduler = poly_schedule(self.optimizer, total, timing=cfg.train.lr_timing)
        self.amp = resolve_amp(cfg.train.amp, self.device).mode  # engine.loop resolves it first; this for callers
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        student = self.model
        if self.info.distributed:
            # broadcast_buffers=False: the Semantic Memory is a buffer, and every rank already writes the
            # channels of the global batch into it (the model gathers them from all ranks, METHODS.md 5), so
            # the buffers agree without a broadcast; the default broadcast would make rank 0's copy win
            # and cost a memory-sized transfer per step.
            student = DistributedDataParallel(
                self.model, device_ids=[self.info.local_rank] if self.device.type == "cuda" else None,
                broadcast_buffers=False)
        self.student = torch.compile(student) if cfg.train.compile else student
        self.ema = EmaTeacher(self.model, cfg.recipe.ema_momentum) if cfg.recipe.teacher == "ema" else None
        # the AllSpark module reads the unlabeled half of the labeled images' pass, so `auto` keeps one pass there
        self.two_passes = cfg.recipe.passes == "apart" or (cfg.recipe.passes == "auto" and cfg.model.ablation == "none")
        teacher = self.ema.model if self.ema else self.model
        self.teacher = torch.compile(teacher) if cfg.train.compile else teacher

    @property
    def iteration(self) -> int:
        """Steps taken so far: the index of the next step in the poly schedule."""
        return self.scheduler.last_epoch

    def close(self) -> None:
        """Drop the DDP wrapper while the process group is alive (see `distributed.distributed`)."""
        self.student = self.model

    def use_memory(self, epoch: int) -> bool:
        """S-Mem is the key/value source once the warm-up epochs are over (METHODS.md 1.2), for cca_mem / full."""
        return self.cfg.model.ablation in ("cca_mem", "full") and epoch >= self.cfg.train.warmup_epochs

    def losses(self, batch_l: dict, batch_u: dict | None, use_memory: bool) -> dict[str, torch.Tensor]:
        """Forward passes and loss terms of one iteration (METHODS.md 2); batch_u is None for `sup`."""
        t = self.cfg.train
        images_l, masks_l = batch_l["image"], batch_l["mask"]
        if self.cfg.method == "sup":
            with autocast(self.device, self.amp):
                logits_l = self.student(images_l)
            loss_l = labeled_loss(logits_l, masks_l, t.labeled_loss, t.ohem_thresh, t.ohem_min_kept)
            return {"loss": loss_l, "loss_l": loss_l, "loss_u": torch.zeros_like(loss_l)}
        self.model.eval()  # the student as its own teacher; an EMA teacher is always in eval mode
        with torch.no_grad(), autocast(self.device, self.amp):
            teacher_logits = self.teacher(batch_u["image"]).float()  # (B, K, S, S), on the weak view
        self.model.train()
        recipe = self.cfg.recipe
        mask_ratio = confident_share(teacher_logits, batch_u["valid"], recipe.threshold)  # on the teacher's view
        # the memory is written from this pass: the student's channels of its own views, grouped by the
        # teacher's probabilities carried through the same CutMix boxes
        images_u, teacher_logits, valid = student_views(batch_u, teacher_logits, recipe.views, recipe.cutmix_partner)
        masks = None
        if recipe.comp_drop:
            masks = complementary_masks(len(batch_u["image"]), max(self.model.encoder.channels)).to(self.device)
        with autocast(self.device, self.amp):
            if self.two_passes:  # UniMatch V2: labeled, then the views (BatchNorm statistics per pass)
                logits_l, logits_u = self.student(images_l), self.student(images_u, channel_masks=masks)
            else:
                logits_l, logits_u = self.student(images_l, images_u=images_u, teacher_logits_u=teacher_logits,
                                                  use_memory=use_memory, channel_masks=masks)
        loss_l = labeled_loss(logits_l, masks_l, t.labeled_loss, t.ohem_thresh, t.ohem_min_kept)
        # one term per view, each over its own unpadded pixels, then their mean (UniMatch V2's (s1 + s2) / 2)
        loss_u = torch.stack([pseudo_label_loss(*parts, recipe.threshold) for parts in
                              zip(logits_u.chunk(recipe.views), teacher_logits.chunk(recipe.views),
                                  valid.chunk(recipe.views))]).mean()
        weight = recipe.unlabeled_weight * rampup_factor(self.iteration, recipe.rampup_iters)
        return {"loss": (loss_l + weight * loss_u) / 2, "loss_l": loss_l, "loss_u": loss_u, "mask_ratio": mask_ratio}

    def step(self, batch_l: dict, batch_u: dict | None, use_memory: bool) -> dict[str, float]:
        """One optimisation step at the schedule's lr (METHODS.md 5, train.lr_timing); returns the rank-averaged
        losses (and, with unlabeled images, the share of their pixels the threshold keeps) and that lr. With
        `train.accumulate` N the batches hold N micro-batches, whose gradients add up before the one update
        (README: what differs from one large batch). Raises NonFiniteLossError before touching the weights when
        the loss is NaN or infinite."""
        lr = self.optimizer.param_groups[0]["lr"]
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        count, total = self.cfg.train.accumulate, None
        for part_l, part_u in zip(micro_batches(batch_l, count), micro_batches(batch_u, count)):
            terms = self.losses(_to(part_l, self.device), _to(part_u, self.device) if part_u is not None else None,
                                 use_memory)
            self.scaler.scale(terms["loss"] / count).backward()
            values = torch.stack([term.detach().float() for term in terms.values()]) / count
            total = values if total is None else total + values
        total = dist_utils.all_reduce_sum(total) / self.info.world_size  # every rank sees a NaN anywhere
        record = dict(zip(terms, total.tolist()))
        if not math.isfinite(record["loss"]):
            raise NonFiniteLossError(f"loss is {record['loss']} at iteration {self.iteration} (labeled "
                                     f"{record['loss_l']}, unlabeled {record['loss_u']})")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema:
            self.ema.update(self.model, self.iteration)
        self.scheduler.step()
        return {**record, "lr": lr}

    def state_dict(self) -> dict:
        """The optimizer's, loss scaler's and EMA teacher's (if any) state, for `latest.state.pt` (the schedule
        follows the iteration)."""
        state = {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}
        return {**state, "ema": self.ema.state_dict()} if self.ema else state

    def load_state(self, model_state: dict, state: dict, weights: Path) -> None:
        """Restore a checkpoint pair (`weights`, the file of `model_state`): weights and memory, EMA teacher,
        optimizer, scaler, schedule position, this rank's RNG.
        The optimizer keeps this config's hyperparameters (lr, lr_multi, momentum, weight_decay) and takes the
        checkpoint's momentum buffers, so a `--force-config` change of them takes effect from the next step."""
        self._check_fits(model_state, weights)
        self.model.load_state_dict(model_state)
        if self.ema:
            self.ema.load_state_dict(self.model, state.get("ema"))
        wanted = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, hyper in zip(self.optimizer.param_groups, wanted):
            group.update(hyper)
        self.scheduler = poly_schedule(self.optimizer, self.total, start=state["iteration"],
                                       timing=self.cfg.train.lr_timing)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        dist_utils.restore_rank_rng(state["rng"], self.info, self.cfg.train.seed, state["iteration"])

    def _check_fits(self, model_state: dict, weights: Path) -> None:
        """Raise ConfigError, naming the model keys that changed since `weights`, when its tensors do not fit."""
        own = self.model.state_dict()
        problems = [f"{k} {tuple(v.shape)} (model: {tuple(own[k].shape)})" for k, v in model_state.items()
                    if k in own and v.shape != own[k].shape]
        problems += [f"{k} missing" for k in sorted(set(own) - set(model_state))]
        problems += [f"{k} unexpected" for k in sorted(set(model_state) - set(own))]
        if not problems:
            return
        _, saved = read_weights(weights)
        changed = [line for line in config_diff(saved, self.cfg) if line.startswith("model.")]
        raise ConfigError(f"{self.cfg.run_dir}: the checkpoint does not fit this model ({'; '.join(changed)}): "
                          f"{'; '.join(problems[:3])}; use another run_dir for a different model")
