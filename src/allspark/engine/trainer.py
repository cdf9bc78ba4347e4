"""One training loop for the three methods (METHODS.md 2): SupBaseline, SemiBaseline and AllSpark.

Per iteration: teacher pass (eval mode, no gradient) on the unlabeled batch -> pseudo-labels and the
logits that feed grouping; student pass (train mode) on [labeled; unlabeled]; (CE_l + CE_u) / 2;
SGD with the poly lr set before the step. Resumable from `latest` at any iteration. The `recipe`
section changes the teacher, the student's unlabeled views and passes and the unlabeled term
(engine/recipes.py); `train.optimizer` and `train.lr_timing` give UniMatch V2's AdamW and lr order.
"""
from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from allspark import distributed as dist_utils
from allspark.config import Config, with_absolute_paths
from allspark.data.layouts import class_names_and_palette
from allspark.data.loaders import build_labeled_loader, build_unlabeled_loader, build_val_loader
from allspark.distributed import DistInfo
from allspark.encoders.base import checkpoint_layers
from allspark.engine.amp import autocast
from allspark.engine.evaluate import evaluate
from allspark.engine.losses import labeled_loss
from allspark.engine.optim import build_optimizer, poly_schedule
from allspark.engine.recipes import (EmaTeacher, complementary_masks, confident_share, pseudo_label_loss,
                                     rampup_factor, student_views)
from allspark.engine.stop import StopRequest
from allspark.errors import ConfigError, NonFiniteLossError, TrainingInterrupted
from allspark.models import build_model
from allspark.runs.checkpoints import newest_pair, save_checkpoint
from allspark.runs.folder import RunFolder
from allspark.runs.lock import lock_run_dir
from allspark.runs.logs import setup_logger
from allspark.runs.metrics import MetricsWriter, truncate_metrics
from allspark.runs.run_config import check_run_dir, config_diff, write_run_config
from allspark.runs.weights_file import read_weights, save_weights


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def micro_batches(batch: dict | None, count: int) -> list[dict | None]:
    """`batch` cut into `count` consecutive parts along the batch dimension (None stays None, count times)."""
    if batch is None:
        return [None] * count
    parts = {k: v.tensor_split(count) if torch.is_tensor(v) else [v] * count for k, v in batch.items()}
    return [{k: v[i] for k, v in parts.items()} for i in range(count)]


class Trainer:
    """The model, optimizer, poly schedule over `total` iterations and one `step`; `_Run` adds loaders,
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
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.amp == "fp16")
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

    def use_memory(self, epoch: int) -> bool:
        """S-Mem is the key/value source once the warm-up epochs are over (METHODS.md 1.2), for cca_mem / full."""
        return self.cfg.model.ablation in ("cca_mem", "full") and epoch >= self.cfg.train.warmup_epochs

    def losses(self, batch_l: dict, batch_u: dict | None, use_memory: bool) -> dict[str, torch.Tensor]:
        """Forward passes and loss terms of one iteration (METHODS.md 2); batch_u is None for `sup`."""
        t = self.cfg.train
        images_l, masks_l = batch_l["image"], batch_l["mask"]
        if self.cfg.method == "sup":
            with autocast(self.device, self.cfg.train.amp):
                logits_l = self.student(images_l)
            loss_l = labeled_loss(logits_l, masks_l, t.labeled_loss, t.ohem_thresh, t.ohem_min_kept)
            return {"loss": loss_l, "loss_l": loss_l, "loss_u": torch.zeros_like(loss_l)}
        self.model.eval()  # the student as its own teacher; an EMA teacher is always in eval mode
        with torch.no_grad(), autocast(self.device, self.cfg.train.amp):
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
        with autocast(self.device, self.cfg.train.amp):
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
        rngs = state["rng"]
        if len(rngs) == self.info.world_size:
            dist_utils.set_rng_state(rngs[self.info.rank])
        else:
            dist_utils.seed_everything(dist_utils.derive_seed(self.cfg.train.seed, state["iteration"]), self.info.rank)

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


def train(cfg: Config, force_config: bool = False, device: str = "auto", progress: bool = True) -> dict:
    """Train `cfg` in `cfg.run_dir`, resuming from its `latest` checkpoint if there is one; relative paths are
    read against the current folder and stored absolute. Works single-process and under torchrun.
    Returns {'iteration', 'epoch', 'best_miou', 'miou'}."""
    cfg = with_absolute_paths(cfg)  # stored so, the run directory works from any folder
    with dist_utils.distributed(device) as info:  # a caller's process group is left to the caller
        return _train(cfg, info, force_config, progress)


def _train(cfg: Config, info: DistInfo, force_config: bool, progress: bool) -> dict:
    """Lock the run directory, build the run and resume it; config.yaml is written only once all of that has
    succeeded, so a failed or refused start leaves the directory as it was."""
    lock = dist_utils.on_main(info, lambda: lock_run_dir(cfg.run_dir))
    try:
        changed = dist_utils.on_main(info, lambda: check_run_dir(cfg, force_config))
        run = _Run(cfg, info, progress)
        run.resume()
        if changed:
            run.log.info("config.yaml replaced at iteration %d (the old one kept as config.%d.yaml): %s",
                         run.iteration, run.iteration, "; ".join(changed))
        dist_utils.on_main(info, lambda: write_run_config(cfg, run.iteration))
        return run.fit()
    finally:
        if lock is not None:
            lock.close()


@dataclass
class Position:
    """Where a run stands besides its iteration (the trainer's schedule counts that); its fields are saved in
    `latest.state.pt` and restored on resume."""

    epoch: int = 0
    epoch_iter: int = 0  # batches of `epoch` already trained
    best_miou: float = -1.0  # best validation mIoU so far, of the model `train.best_of` names
    miou: float = float("nan")  # latest validation mIoU of that model

    @classmethod
    def from_state(cls, state: dict) -> Position:
        return cls(**{f.name: state[f.name] for f in fields(cls)})


def _loaders(cfg: Config, info: DistInfo):
    """This rank's (labeled, unlabeled or None for `sup`, validation) loaders."""
    unlabeled = build_unlabeled_loader(cfg, info.rank, info.world_size) if cfg.method != "sup" else None
    length = len(unlabeled.dataset) if unlabeled is not None else None
    labeled = build_labeled_loader(cfg, info.rank, info.world_size, length)
    return labeled, unlabeled, build_val_loader(cfg, info.rank, info.world_size)


def _warn_about_overlap(log, labeled, unlabeled) -> None:
    """One warning when images are in both training lists (they would teach with labels and pseudo-labels)."""
    both = sorted({image for image, _ in labeled.entries} & {image for image, _ in unlabeled.entries})
    if both:
        log.warning("%d image(s) are in both %s and %s (first: %s); `allspark check-data` lists them", len(both),
                    labeled.list_path, unlabeled.list_path, both[0])


class _Run:
    """One training in its run directory: trainer, loaders and position; epochs, evaluation, checkpoints, logs."""

    def __init__(self, cfg: Config, info: DistInfo, progress: bool):
        self.cfg, self.info, self.progress = cfg, info, progress
        self.run_dir = Path(cfg.run_dir)
        self.folder = RunFolder(cfg.run_dir)
        self.log = setup_logger(self.run_dir if info.is_main else None, console=info.is_main)
        self.labeled, self.unlabeled, self.val = _loaders(cfg, info)
        if self.unlabeled is not None:
            _warn_about_overlap(self.log, self.labeled.dataset, self.unlabeled.dataset)
        self.iters_per_epoch = min(len(self.labeled), len(self.unlabeled)) if self.unlabeled else len(self.labeled)
        if self.iters_per_epoch == 0:
            raise ConfigError(f"{cfg.run_dir}: an epoch has no full batch (train.batch_size={cfg.train.batch_size} "
                              f"per process x {info.world_size} processes exceeds the training list)")
        self.total = min(cfg.train.max_iters or math.inf, cfg.train.epochs * self.iters_per_epoch)  # poly's T
        dist_utils.seed_everything(cfg.train.seed)  # the same initial weights and memory noise on every rank
        self.trainer = Trainer(cfg, info, total=self.total)
        dist_utils.seed_everything(cfg.train.seed, info.rank)  # then different dropout per rank
        self.at = Position()
        self.writer = None
        self.stop, self.stop_signal = None, 0

    @property
    def iteration(self) -> int:
        """Steps taken so far, as the trainer's schedule counts them (the one count of the run)."""
        return self.trainer.iteration

    def resume(self) -> None:
        """Continue from the newest checkpoint pair that loads, saying which (and why a newer one did not); metrics
        past the starting point are dropped either way."""
        pair = newest_pair(self.run_dir)
        if pair is not None:
            self.trainer.load_state(pair.model_state, pair.state, pair.weights)
            self.at = Position.from_state(pair.state)
            self.log.log(logging.WARNING if pair.skipped else logging.INFO,
                         "resuming %s at iteration %d (epoch %d, batch %d) from %s", self.run_dir, self.iteration,
                         self.at.epoch, self.at.epoch_iter, pair.source)
        if self.info.is_main:
            truncate_metrics(self.run_dir, self.iteration)

    def fit(self) -> dict:
        """Train to the end of the schedule; returns {'iteration', 'epoch', 'best_miou', 'miou'}."""
        cfg, at, info = self.cfg, self.at, self.info
        names, _ = class_names_and_palette(cfg)
        self.writer = MetricsWriter(self.run_dir, names, purge_after=self.iteration) if info.is_main else None
        self.log.info("method %s, %d iterations (%d per epoch), %d process(es) on %s", cfg.method, self.total,
                      self.iters_per_epoch, info.world_size, info.device)
        bar = tqdm(total=self.total, initial=self.iteration, desc=cfg.method, dynamic_ncols=True,
                   disable=not (self.progress and info.is_main))
        started = time.time()
        try:
            with StopRequest() as self.stop:
                while self.iteration < self.total and at.epoch < cfg.train.epochs and not self.stop_signal:
                    self.train_one_epoch(bar)
                    if self.stop_signal:
                        break
                    if at.epoch_iter >= self.iters_per_epoch:  # a budget (max_iters) may end an epoch part-way
                        at.epoch, at.epoch_iter = at.epoch + 1, 0
                    self.end_epoch()
                if self.stop_signal:
                    self.save()
                    raise TrainingInterrupted(
                        f"stopped by {signal.Signals(self.stop_signal).name} at iteration {self.iteration} (epoch "
                        f"{at.epoch}, batch {at.epoch_iter}); saved {self.folder.weights()}, run the "
                        "same command to continue", self.stop_signal)
        except NonFiniteLossError as err:
            raise NonFiniteLossError(f"{err}; stopped, {self.folder.weights()} keeps the last good state") from None
        finally:
            bar.close()
            if self.writer:
                self.writer.close()
        self.log.info("done: %d iterations in %.1f s, best mIoU %.2f %%", self.iteration, time.time() - started,
                      at.best_miou * 100)
        return {"iteration": self.iteration, "epoch": at.epoch, "best_miou": at.best_miou, "miou": at.miou}

    def agree_on_stop(self) -> None:
        """After a step: `stop_signal` becomes the signal any rank got (0: none), on every rank, so all ranks stop
        after the same step."""
        self.stop_signal = dist_utils.max_over_ranks(self.stop.signum or 0)

    def batches(self):
        """(labeled, unlabeled or None) batch pairs of the current epoch, from batch `epoch_iter` on."""
        loaders = [loader for loader in (self.labeled, self.unlabeled) if loader is not None]
        for loader in loaders:
            _set_epoch(loader, self.at.epoch)
        rest = [skip_batches(loader, self.at.epoch_iter) for loader in loaders]
        return zip(*rest) if self.unlabeled is not None else ((batch, None) for batch in rest[0])

    def train_one_epoch(self, bar) -> None:
        """The current epoch's remaining steps, with their metrics lines and periodic checkpoints."""
        cfg, at = self.cfg, self.at
        use_memory = self.trainer.use_memory(at.epoch)
        step_seconds = []  # of the steps since the last train line (data loading not counted)
        for batch_l, batch_u in self.batches():
            if at.epoch_iter >= self.iters_per_epoch or self.iteration >= self.total:
                break
            started = time.perf_counter()
            record = self.trainer.step(batch_l, batch_u, use_memory)  # ends in a host sync (the losses' values)
            step_seconds.append(time.perf_counter() - started)
            at.epoch_iter += 1
            # refresh=False: the bar redraws at tqdm's own pace in update(), not once per step
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", epoch=at.epoch, refresh=False)
            bar.update(1)
            if self.writer and (self.iteration % cfg.train.log_every == 0 or self.iteration == 1):
                self.writer.write({"split": "train", "iter": self.iteration, "epoch": at.epoch, **record,
                                   "use_memory": int(use_memory), "step_time": sum(step_seconds) / len(step_seconds)})
                step_seconds = []
            self.agree_on_stop()
            if self.stop_signal:
                return
            if self.iteration % cfg.train.checkpoint_every == 0 and self.iteration < self.total:
                self.save()

    def end_epoch(self) -> None:
        """Evaluate when due (keeping `best`); checkpoint if the run ends here (the steps checkpoint every
        `train.checkpoint_every`: epochs of a few steps, as a small labeled list makes them, would otherwise write one
        per step)."""
        cfg, at = self.cfg, self.at
        finished = self.iteration >= self.total or at.epoch >= cfg.train.epochs
        if at.epoch % cfg.train.eval_every == 0 or finished:
            self.evaluate()
        if finished:
            self.save()

    def evaluate(self) -> None:
        """Validation mIoU of the student and, with an EMA teacher, of the teacher (both logged and written);
        `best.safetensors` holds the model `train.best_of` names whenever its mIoU improves."""
        at, info = self.at, self.info
        models = {"": self.trainer.model}  # metrics key suffix -> model
        if self.trainer.ema:
            models["_ema"] = self.trainer.ema.model
        record = {"split": "val", "iter": self.iteration, "epoch": at.epoch}
        for suffix, model in models.items():
            confusion = evaluate(model, self.val, self.cfg, info.device, amp=self.cfg.train.amp,
                                 progress=self.progress and info.is_main)
            record.update({f"miou{suffix}": confusion.miou(), f"iou{suffix}": confusion.iou().tolist()})
        teacher = f", EMA teacher {record['miou_ema'] * 100:.2f} %" if "miou_ema" in record else ""
        self.log.info("epoch %d, iteration %d: mIoU %.2f %%%s", at.epoch, self.iteration, record["miou"] * 100, teacher)
        if self.writer:
            self.writer.write(record)
        followed = "_ema" if self.cfg.train.best_of == "ema" else ""
        at.miou = record["miou" + followed]
        if at.miou > at.best_miou:
            at.best_miou = at.miou
            if info.is_main:
                save_weights(self.folder.weights("best"), models[followed].state_dict(),
                             self.cfg, extra={"iteration": str(self.iteration), "miou": f"{at.miou:.6f}",
                                              "best_of": self.cfg.train.best_of})

    def save(self) -> None:
        """Write `latest` at the current position. Every rank calls it: each rank's RNG state is gathered."""
        rngs = dist_utils.all_gather_object(dist_utils.get_rng_state())
        if self.info.is_main:
            state = {**asdict(self.at), **self.trainer.state_dict(), "iteration": self.iteration,
                     "world_size": self.info.world_size, "rng": rngs}
            save_checkpoint(self.run_dir, self.trainer.model.state_dict(), self.cfg, state)
