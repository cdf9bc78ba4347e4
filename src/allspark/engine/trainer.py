"""One training loop for the three methods (spec 2): SupBaseline, SemiBaseline and AllSpark.

Per iteration: teacher pass (eval mode, no gradient) on the unlabeled batch -> pseudo-labels and the
logits that feed grouping; student pass (train mode) on [labeled; unlabeled]; (CE_l + CE_u) / 2;
SGD with the poly lr set before the step. Resumable from `latest` at any iteration.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from allspark.config import Config, ConfigError
from allspark.engine import distributed as dist_utils
from allspark.engine.checkpoint import load_checkpoint, save_checkpoint, save_weights
from allspark.engine.distributed import DistInfo
from allspark.engine.evaluate import evaluate
from allspark.engine.losses import labeled_loss, unlabeled_loss
from allspark.engine.optim import build_optimizer, set_poly_lr
from allspark.engine.runs import MetricsWriter, prepare_run_dir, setup_logger, truncate_metrics

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops and `latest` keeps the last good state."""


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class Trainer:
    """The model, optimizer and one `step`; `fit` adds loaders, checkpoints, evaluation and logs."""

    def __init__(self, cfg: Config, info: DistInfo | None = None):
        from allspark.models import build_model

        self.cfg = cfg
        self.info = info or DistInfo()
        self.device = self.info.device
        model = build_model(cfg)
        model.check_crop(cfg.model.crop_size)  # a crop that does not fit the memory fails here, not at step 1
        if self.info.distributed and self.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(self.model, cfg.train)
        self.amp_dtype = AMP_DTYPES[cfg.train.amp]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.amp == "fp16")
        student = self.model
        if self.info.distributed:
            # broadcast_buffers=False: the Semantic Memory is a buffer, and every rank already writes the
            # channels of the global batch into it (the model gathers them from all ranks, spec 5), so
            # the buffers agree without a broadcast; the default broadcast would make rank 0's copy win
            # and cost a memory-sized transfer per step.
            student = DistributedDataParallel(
                self.model, device_ids=[self.info.local_rank] if self.device.type == "cuda" else None,
                broadcast_buffers=False)
        self.student = torch.compile(student) if cfg.train.compile else student
        self.teacher = torch.compile(self.model) if cfg.train.compile else self.model

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)

    def use_memory(self, epoch: int) -> bool:
        """S-Mem is the key/value source once the warm-up epochs are over (spec 1.2), for cca_mem / full."""
        return self.cfg.model.ablation in ("cca_mem", "full") and epoch >= self.cfg.train.warmup_epochs

    def losses(self, batch_l: dict, batch_u: dict | None, use_memory: bool) -> dict[str, torch.Tensor]:
        """Forward passes and loss terms of one iteration (spec 2); batch_u is None for `sup`."""
        t = self.cfg.train
        images_l, masks = batch_l["image"], batch_l["mask"]
        if self.cfg.method == "sup":
            with self._autocast():
                logits_l = self.student(images_l)
            loss_l = labeled_loss(logits_l, masks, t.labeled_loss, t.ohem_thresh, t.ohem_min_kept)
            return {"loss": loss_l, "loss_l": loss_l, "loss_u": torch.zeros_like(loss_l)}
        images_u = batch_u["image"]
        self.model.eval()
        with torch.no_grad(), self._autocast():
            teacher_logits = self.teacher(images_u).float()  # (B, K, S, S)
        self.model.train()
        pseudo = teacher_logits.argmax(1)  # (B, S, S)
        with self._autocast():
            logits_l, logits_u = self.student(images_l, images_u=images_u, teacher_logits_u=teacher_logits,
                                              use_memory=use_memory)
        loss_l = labeled_loss(logits_l, masks, t.labeled_loss, t.ohem_thresh, t.ohem_min_kept)
        loss_u = unlabeled_loss(logits_u, pseudo, batch_u["valid"])
        return {"loss": (loss_l + loss_u) / 2, "loss_l": loss_l, "loss_u": loss_u}

    def step(self, batch_l: dict, batch_u: dict | None, iteration: int, total: int, use_memory: bool) -> dict[str, float]:
        """One optimisation step at `iteration` of `total`; returns the rank-averaged losses and lr.
        Raises NonFiniteLossError before touching the weights when the loss is NaN or infinite."""
        lr = set_poly_lr(self.optimizer, iteration, total)  # spec 5: set before the step
        self.model.train()
        batch_l = _to(batch_l, self.device)
        batch_u = _to(batch_u, self.device) if batch_u is not None else None
        terms = self.losses(batch_l, batch_u, use_memory)
        values = torch.stack([terms["loss"].detach(), terms["loss_l"].detach(), terms["loss_u"].detach()]).float()
        values = dist_utils.all_reduce_sum(values) / self.info.world_size  # every rank sees a NaN anywhere
        loss, loss_l, loss_u = values.tolist()
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"loss is {loss} at iteration {iteration} (labeled {loss_l}, unlabeled {loss_u})")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {"loss": loss, "loss_l": loss_l, "loss_u": loss_u, "lr": lr}

    def state(self, epoch: int, epoch_iter: int, iteration: int, best: float, miou: float) -> dict:
        """Training state for `latest.state.pt`: plain types and tensors only."""
        return {"epoch": epoch, "epoch_iter": epoch_iter, "iteration": iteration, "best_miou": best, "miou": miou,
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "world_size": self.info.world_size,
                "rng": dist_utils.all_gather_object(dist_utils.get_rng_state())}  # a collective: all ranks call it

    def load_state(self, model_state: dict, state: dict) -> None:
        """Restore a `latest` checkpoint: weights and memory, optimizer, scaler, this rank's RNG."""
        own = self.model.state_dict()
        wrong = [f"{k} {tuple(v.shape)} (model: {tuple(own[k].shape)})" for k, v in model_state.items()
                 if k in own and v.shape != own[k].shape]
        if wrong:
            raise ConfigError(f"{self.cfg.run_dir}: the checkpoint does not fit this model (e.g. the Semantic Memory "
                              f"was built for another key 'model.crop_size'): {'; '.join(wrong[:3])}")
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        if len(rngs) == self.info.world_size:
            dist_utils.set_rng_state(rngs[self.info.rank])
        else:
            dist_utils.seed_everything(self.cfg.train.seed + 7919 * state["iteration"], self.info.rank)


def skip_batches(loader, count: int):
    """The loader's batches from index `count` on, in the same order, without loading the skipped ones:
    a copy of the DataLoader over the rest of its sampler's indices (the sampler's epoch is already set)."""
    if count == 0:
        return loader
    indices = list(loader.sampler)[count * loader.batch_size:]
    return torch.utils.data.DataLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=indices, num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
        worker_init_fn=loader.worker_init_fn, generator=loader.generator,
        persistent_workers=False, prefetch_factor=loader.prefetch_factor)


def _set_epoch(loader, epoch: int) -> None:
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)


def class_names(cfg: Config) -> list[str]:
    """The layout's class names, or class indices when they are unknown or do not match model.num_classes."""
    from allspark.data import get_layout

    try:
        names = list(get_layout(cfg.data.layout, cfg.data.root).class_names)
    except (OSError, ValueError, KeyError):
        names = []
    return names if len(names) == cfg.model.num_classes else [str(i) for i in range(cfg.model.num_classes)]


def train(cfg: Config, force_config: bool = False, device: str = "auto", progress: bool = True) -> dict:
    """Train `cfg` in `cfg.run_dir`, resuming from its `latest` checkpoint if there is one.
    Works single-process and under torchrun. Returns {'iteration', 'epoch', 'best_miou', 'miou'}."""
    owns_group = not dist_utils.is_initialized()  # a caller's process group is left to the caller
    info = dist_utils.init_distributed(device)
    try:
        return _train(cfg, info, force_config, progress)
    finally:
        if owns_group:
            dist_utils.cleanup()


def _train(cfg: Config, info: DistInfo, force_config: bool, progress: bool) -> dict:
    from allspark.data import build_labeled_loader, build_unlabeled_loader, build_val_loader

    error = None
    if info.is_main:
        try:
            prepare_run_dir(cfg, force_config)
        except ConfigError as err:
            error = str(err)
    error = dist_utils.broadcast_object(error)
    if error:
        raise ConfigError(error)
    run_dir = Path(cfg.run_dir)
    log = setup_logger(run_dir if info.is_main else None)
    dist_utils.seed_everything(cfg.train.seed)  # the same initial weights and memory noise on every rank
    trainer = Trainer(cfg, info)
    dist_utils.seed_everything(cfg.train.seed, info.rank)  # then different dropout and crops per rank

    semi = cfg.method != "sup"
    unlabeled = build_unlabeled_loader(cfg, info.rank, info.world_size) if semi else None
    labeled = build_labeled_loader(cfg, info.rank, info.world_size, len(unlabeled.dataset) if semi else None)
    val = build_val_loader(cfg, info.rank, info.world_size)
    iters_per_epoch = min(len(labeled), len(unlabeled)) if semi else len(labeled)
    if iters_per_epoch == 0:
        raise ConfigError(f"{cfg.run_dir}: an epoch has no full batch (train.batch_size={cfg.train.batch_size} per "
                          f"process x {info.world_size} processes exceeds the training list)")
    total = min(cfg.train.max_iters or math.inf, cfg.train.epochs * iters_per_epoch)  # T of the poly schedule

    epoch, epoch_iter, iteration, best, miou = 0, 0, 0, -1.0, float("nan")
    checkpoint = load_checkpoint(run_dir)
    if checkpoint is not None:
        trainer.load_state(*checkpoint)
        state = checkpoint[1]
        epoch, epoch_iter, iteration = state["epoch"], state["epoch_iter"], state["iteration"]
        best, miou = state["best_miou"], state["miou"]
        log.info("resuming %s at iteration %d (epoch %d, batch %d)", run_dir, iteration, epoch, epoch_iter)
        if info.is_main:
            truncate_metrics(run_dir, iteration)
    writer = MetricsWriter(run_dir, class_names(cfg)) if info.is_main else None
    log.info("method %s, %d iterations (%d per epoch), %d process(es) on %s", cfg.method, total, iters_per_epoch,
             info.world_size, info.device)

    def save(at_epoch: int, at_epoch_iter: int) -> None:
        state = trainer.state(at_epoch, at_epoch_iter, iteration, best, miou)
        if info.is_main:
            save_checkpoint(run_dir, trainer.model.state_dict(), cfg, state)

    bar = tqdm(total=total, initial=iteration, desc=cfg.method, disable=not (progress and info.is_main),
               dynamic_ncols=True)
    started = time.time()
    try:
        while iteration < total and epoch < cfg.train.epochs:
            for loader in (labeled, unlabeled):
                if loader is not None:
                    _set_epoch(loader, epoch)
            use_memory = trainer.use_memory(epoch)
            batches_l = skip_batches(labeled, epoch_iter)
            batches_u = skip_batches(unlabeled, epoch_iter) if semi else None
            pairs = zip(batches_l, batches_u) if semi else ((b, None) for b in batches_l)
            for batch_l, batch_u in pairs:
                if epoch_iter >= iters_per_epoch or iteration >= total:
                    break
                record = trainer.step(batch_l, batch_u, iteration, total, use_memory)
                iteration += 1
                epoch_iter += 1
                # refresh=False: the bar redraws at tqdm's own pace in update(), not once per step
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", epoch=epoch, refresh=False)
                bar.update(1)
                if writer and (iteration % cfg.train.log_every == 0 or iteration == 1):
                    writer.write({"split": "train", "iter": iteration, "epoch": epoch, **record,
                                  "use_memory": int(use_memory)})
                if iteration % cfg.train.checkpoint_every == 0 and iteration < total:
                    save(epoch, epoch_iter)
            epoch, epoch_iter = epoch + 1, 0
            if epoch % cfg.train.eval_every == 0 or iteration >= total or epoch >= cfg.train.epochs:
                confusion = evaluate(trainer.model, val, cfg, info.device, amp_dtype=trainer.amp_dtype,
                                     progress=progress and info.is_main)
                miou, iou = confusion.miou(), confusion.iou().tolist()
                log.info("epoch %d, iteration %d: mIoU %.2f", epoch, iteration, miou * 100)
                if writer:
                    writer.write({"split": "val", "iter": iteration, "epoch": epoch, "miou": miou, "iou": iou})
                if miou > best:
                    best = miou
                    if info.is_main:
                        save_weights(run_dir / "checkpoints" / "best.safetensors", trainer.model.state_dict(), cfg,
                                     extra={"iteration": str(iteration), "miou": f"{miou:.6f}"})
            save(epoch, epoch_iter)
    except NonFiniteLossError as err:
        log.error("%s; stopping. %s keeps the last good checkpoint", err, run_dir / "checkpoints" / "latest.safetensors")
        raise
    finally:
        bar.close()
        if writer:
            writer.close()
    log.info("done: %d iterations in %.1f s, best mIoU %.2f", iteration, time.time() - started, best * 100)
    return {"iteration": iteration, "epoch": epoch, "best_miou": best, "miou": miou}
