"""The run around the training steps: epochs over the loaders, evaluation and `best`, `latest` checkpoints, logs,
resuming at any iteration and stopping on a signal. One step itself is engine/step.py (`Trainer.step`).
"""
from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from allspark import distributed as dist_utils
from allspark.config.schema import Config, with_absolute_paths
from allspark.config.validation import check_data_root
from allspark.data.layouts import class_names_and_palette
from allspark.data.loaders import build_labeled_loader, build_unlabeled_loader, build_val_loader
from allspark.distributed import DistInfo
from allspark.engine.evaluate import evaluate
from allspark.engine.memory_budget import check_training, crop_note, largest_images
from allspark.engine.rank_buffers import load_rank_buffers, rank_buffers
from allspark.engine.step import Trainer
from allspark.engine.stop import StopRequest
from allspark.errors import ConfigError, NonFiniteLossError, TrainingInterrupted
from allspark.precision import Precision
from allspark.progress import progress_bar
from allspark.runs.checkpoints import newest_pair, save_checkpoint
from allspark.runs.folder import RunFolder
from allspark.runs.lock import lock_run_dir
from allspark.runs.logs import setup_logger
from allspark.runs.metrics import MetricsWriter, truncate_metrics
from allspark.runs.run_config import check_run_dir, run_precision, write_run_config
from allspark.runs.weights_file import save_weights


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


def train(cfg: Config, force_config: bool = False, device: str = "auto", progress: bool = True) -> dict:
    """Train `cfg` in `cfg.run_dir`, resuming from its `latest` checkpoint if there is one; relative paths are
    read against the current folder and stored absolute. Works single-process and under torchrun.
    Returns {'iteration', 'epoch', 'best_miou', 'miou'}."""
    check_data_root(cfg)  # while a relative data.root is still seen as relative
    cfg = with_absolute_paths(cfg)  # stored so, the run directory works from any folder
    with dist_utils.distributed(device) as info:  # a caller's process group is left to the caller
        return _train(cfg, info, force_config, progress)


def _train(cfg: Config, info: DistInfo, force_config: bool, progress: bool) -> dict:
    """Build the run (its data and model checked) before the run directory is touched, so that a bad value leaves
    no folder behind; then lock the directory and resume. config.yaml is written only once all of that has
    succeeded, so a failed or refused start leaves the directory as it was."""
    cfg, precision = run_precision(cfg, info)  # before the memory estimate; config.yaml keeps the concrete mode
    run = _Run(cfg, info, progress, precision)
    lock = None
    try:
        lock = dist_utils.on_main(info, lambda: lock_run_dir(cfg.run_dir))
        changed = dist_utils.on_main(info, lambda: check_run_dir(cfg, force_config))
        run.open_log()
        run.resume()
        if changed:
            run.log.info("config.yaml replaced at iteration %d (the old one kept as config.%d.yaml): %s",
                         run.iteration, run.iteration, "; ".join(changed))
        dist_utils.on_main(info, lambda: write_run_config(cfg, run.iteration))
        return run.fit()
    finally:
        run.trainer.close()
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

    def __init__(self, cfg: Config, info: DistInfo, progress: bool, precision: Precision):
        self.cfg, self.info, self.progress, self.precision = cfg, info, progress, precision
        self.run_dir = Path(cfg.run_dir)
        self.folder = RunFolder(cfg.run_dir)
        self.log = setup_logger(None, console=info.is_main)  # train.log once the run directory is locked (open_log)
        self.labeled, self.unlabeled, self.val = _loaders(cfg, info)
        self.iters_per_epoch = min(len(self.labeled), len(self.unlabeled)) if self.unlabeled else len(self.labeled)
        if self.iters_per_epoch == 0:
            raise ConfigError(f"{cfg.run_dir}: an epoch has no full batch (train.batch_size={cfg.train.batch_size} "
                              f"per process x {info.world_size} processes exceeds the training list)")
        self.total = min(cfg.train.max_iters or math.inf, cfg.train.epochs * self.iters_per_epoch)  # poly's T
        self.memory_line = dist_utils.on_main(info, self.check_memory)
        dist_utils.seed_everything(cfg.train.seed)  # the same initial weights and memory noise on every rank
        self.trainer = Trainer(cfg, info, total=self.total)
        dist_utils.seed_everything(cfg.train.seed, info.rank)  # then different dropout per rank
        self.position = Position()
        self.writer = None
        self.stop, self.stop_signal = None, 0

    def check_memory(self) -> str:
        """Before the model is built: a step that cannot fit stops the run in one line (MemoryBudgetError; no run
        folder is made yet); a crop larger than every training image read is a warning (on the console: train.log is
        not open yet). Returns the estimate's line."""
        data = self.labeled.dataset
        note = crop_note(self.cfg.model.crop_size, largest_images(data.root / image for image, _ in data.entries[:64]))
        if note:
            self.log.warning(note)
        return check_training(self.cfg, self.info.device)

    @property
    def iteration(self) -> int:
        """Steps taken so far, as the trainer's schedule counts them (the one count of the run)."""
        return self.trainer.iteration

    def open_log(self) -> None:
        """Log to the run directory's train.log too (rank 0), once it is locked; then the warnings about the data."""
        self.log = setup_logger(self.run_dir if self.info.is_main else None, console=self.info.is_main)
        self.log.info(self.precision.line())
        if self.unlabeled is not None:
            _warn_about_overlap(self.log, self.labeled.dataset, self.unlabeled.dataset)

    def resume(self) -> None:
        """Continue from the newest checkpoint pair that loads, saying which (and why a newer one did not); metrics
        past the starting point are dropped either way."""
        pair = newest_pair(self.run_dir)
        if pair is not None:
            self.trainer.load_state(pair.model_state, pair.state, pair.weights)
            ranks = pair.state.get("rank_buffers")
            if ranks and len(ranks) == self.info.world_size:  # else every rank takes rank 0's, in the weights
                load_rank_buffers(self.trainer, ranks[self.info.rank])
            self.position = Position.from_state(pair.state)
            self.log.log(logging.WARNING if pair.skipped else logging.INFO,
                         "resuming %s at iteration %d (epoch %d, batch %d) from %s", self.run_dir, self.iteration,
                         self.position.epoch, self.position.epoch_iter, pair.source)
        if self.info.is_main:
            truncate_metrics(self.run_dir, self.iteration, evaluated=self.position.epoch_iter < self.iters_per_epoch)

    def fit(self) -> dict:
        """Train to the end of the schedule; returns {'iteration', 'epoch', 'best_miou', 'miou'}."""
        cfg, position, info = self.cfg, self.position, self.info
        names, _ = class_names_and_palette(cfg)
        self.writer = MetricsWriter(self.run_dir, names, purge_after=self.iteration) if info.is_main else None
        self.log.info("method %s, %d iterations (%d per epoch), %d process(es) on %s", cfg.method, self.total,
                      self.iters_per_epoch, info.world_size, info.device)
        if self.memory_line:
            self.log.info(self.memory_line)
        bar = progress_bar(total=self.total, initial=self.iteration, desc=cfg.method,
                           enabled=self.progress and info.is_main, every=cfg.train.log_every)
        started = time.time()
        try:
            with StopRequest() as self.stop:
                while self.iteration < self.total and position.epoch < cfg.train.epochs and not self.stop_signal:
                    self.train_one_epoch(bar)
                    if self.stop_signal:
                        break
                    if position.epoch_iter >= self.iters_per_epoch:  # a budget (max_iters) may end an epoch part-way
                        position.epoch, position.epoch_iter = position.epoch + 1, 0
                    self.end_epoch()
                if self.stop_signal:
                    self.save()
                    raise TrainingInterrupted(
                        f"stopped by {signal.Signals(self.stop_signal).name} at iteration {self.iteration} (epoch "
                        f"{position.epoch}, batch {position.epoch_iter}); saved {self.folder.weights()}, run the "
                        "same command to continue", self.stop_signal)
        except NonFiniteLossError as err:
            raise NonFiniteLossError(f"{err}; stopped, {self.folder.weights()} keeps the last good state") from None
        finally:
            bar.close()
            if self.writer:
                self.writer.close()
        self.log.info("done: %d iterations in %.1f s, best mIoU %.2f %%", self.iteration, time.time() - started,
                      position.best_miou * 100)
        return {"iteration": self.iteration, "epoch": position.epoch, "best_miou": position.best_miou,
                "miou": position.miou}

    def agree_on_stop(self) -> None:
        """After a step: `stop_signal` becomes the signal any rank got (0: none), on every rank, so all ranks stop
        after the same step."""
        self.stop_signal = dist_utils.max_over_ranks(self.stop.signum or 0)

    def batches(self):
        """(labeled, unlabeled or None) batch pairs of the current epoch, from batch `epoch_iter` on."""
        loaders = [loader for loader in (self.labeled, self.unlabeled) if loader is not None]
        for loader in (loader for loader in loaders if hasattr(loader.sampler, "set_epoch")):
            loader.sampler.set_epoch(self.position.epoch)
        rest = [skip_batches(loader, self.position.epoch_iter) for loader in loaders]
        return zip(*rest) if self.unlabeled is not None else ((batch, None) for batch in rest[0])

    def train_one_epoch(self, bar) -> None:
        """The current epoch's remaining steps, with their metrics lines and periodic checkpoints."""
        cfg, position = self.cfg, self.position
        use_memory = self.trainer.use_memory(position.epoch)
        step_seconds = []  # of the steps since the last train line (data loading not counted)
        for batch_l, batch_u in self.batches():
            if position.epoch_iter >= self.iters_per_epoch or self.iteration >= self.total:
                break
            started = time.perf_counter()
            record = self.trainer.step(batch_l, batch_u, use_memory)  # ends in a host sync (the losses' values)
            step_seconds.append(time.perf_counter() - started)
            position.epoch_iter += 1
            # refresh=False: the bar redraws at tqdm's own pace in update(), not once per step
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", epoch=position.epoch, refresh=False)
            bar.update(1)
            if self.writer and (self.iteration % cfg.train.log_every == 0 or self.iteration == 1):
                self.writer.write({"split": "train", "iter": self.iteration, "epoch": position.epoch, **record,
                                   "use_memory": int(use_memory), "step_time": sum(step_seconds) / len(step_seconds)})
                step_seconds = []
            self.agree_on_stop()
            if self.iteration >= self.total:
                self.stop_signal = 0  # the last step: finish (evaluate, save); a resume would find no step left to take
            if self.stop_signal:
                return
            if self.iteration % cfg.train.checkpoint_every == 0 and self.iteration < self.total:
                self.save()

    def end_epoch(self) -> None:
        """Evaluate when due (keeping `best`); checkpoint if the run ends here (the steps checkpoint every
        `train.checkpoint_every`: epochs of a few steps, as a small labeled list makes them, would otherwise write one
        per step)."""
        cfg, position = self.cfg, self.position
        finished = self.iteration >= self.total or position.epoch >= cfg.train.epochs
        if position.epoch % cfg.train.eval_every == 0 or finished:
            self.evaluate()
        if finished:
            self.save()

    def evaluate(self) -> None:
        """Validation mIoU of the student and, with an EMA teacher, of the teacher (both logged and written);
        `best.safetensors` holds the model `train.best_of` names whenever its mIoU improves."""
        position, info = self.position, self.info
        models = {"": self.trainer.model}  # metrics key suffix -> model
        if self.trainer.ema:
            models["_ema"] = self.trainer.ema.model
        record = {"split": "val", "iter": self.iteration, "epoch": position.epoch}
        for suffix, model in models.items():
            confusion = evaluate(model, self.val, self.cfg, info.device, amp=self.cfg.train.amp,
                                 progress=self.progress and info.is_main)
            record.update({f"miou{suffix}": confusion.miou(), f"iou{suffix}": confusion.iou().tolist()})
        teacher = f", EMA teacher {record['miou_ema'] * 100:.2f} %" if "miou_ema" in record else ""
        self.log.info("epoch %d, iteration %d: mIoU %.2f %%%s", position.epoch, self.iteration, record["miou"] * 100,
                      teacher)
        if self.writer:
            self.writer.write(record)
        followed = "_ema" if self.cfg.train.best_of == "ema" else ""
        position.miou = record["miou" + followed]
        if position.miou > position.best_miou:
            position.best_miou = position.miou
            if info.is_main:
                save_weights(self.folder.weights("best"), models[followed].state_dict(),
                             self.cfg, extra={"iteration": str(self.iteration), "miou": f"{position.miou:.6f}",
                                              "best_of": self.cfg.train.best_of})

    def save(self) -> None:
        """Write `latest` at the current position. Every rank calls it: each rank's RNG state (and under torchrun its
        own buffers, engine/rank_buffers.py) is gathered."""
        rngs = dist_utils.all_gather_object(dist_utils.get_rng_state())
        buffers = dist_utils.all_gather_object(rank_buffers(self.trainer)) if self.info.distributed else None
        if self.info.is_main:
            state = {**asdict(self.position), **self.trainer.state_dict(), "iteration": self.iteration,
                     "world_size": self.info.world_size, "rng": rngs, **({"rank_buffers": buffers} if buffers else {})}
            save_checkpoint(self.run_dir, self.trainer.model.state_dict(), self.cfg, state)
