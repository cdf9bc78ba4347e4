"""The run around the pretraining steps: its folder (lock, config, options, no overwrite), epochs over the images,
`latest` checkpoints, exact resume, progress, stop on a signal, and at the end the encoder weights file that
`model.pretrained=RUN` loads."""
from __future__ import annotations

import signal
import time
from pathlib import Path

from allspark import distributed as dist_utils
from allspark.config.schema import Config, with_absolute_paths
from allspark.distributed import DistInfo
from allspark.engine.loop import skip_batches
from allspark.engine.stop import StopRequest
from allspark.errors import TrainingInterrupted
from allspark.pretrain.images import image_paths, pretrain_loader
from allspark.pretrain.options import PretrainOptions, check_options, write_options
from allspark.pretrain.pretrainer import Pretrainer
from allspark.progress import progress_bar
from allspark.runs.checkpoints import newest_pair, save_checkpoint
from allspark.runs.folder import ENCODER, RunFolder
from allspark.runs.lock import lock_run_dir
from allspark.runs.logs import setup_logger
from allspark.runs.metrics import MetricsWriter, truncate_metrics
from allspark.runs.run_config import check_run_dir, run_precision, write_run_config
from allspark.runs.weights_file import save_weights


def pretrain(cfg: Config, options: PretrainOptions, force_config: bool = False, device: str = "auto",
             progress: bool = True) -> dict:
    """Pretrain `cfg.model.encoder` on `options.images` in `cfg.run_dir`, resuming from its `latest` pair if there is
    one; single-process or under torchrun. Returns {'iteration', 'loss', 'encoder' (the weights file)}."""
    options.check()
    cfg, options = with_absolute_paths(cfg), options.absolute()
    with dist_utils.distributed(device) as info:
        cfg, precision = run_precision(cfg, info)  # config.yaml keeps the concrete mode
        run = _PretrainRun(cfg, options, info, progress)  # images read, teacher loaded: before the folder is touched
        lock = None
        try:
            lock = dist_utils.on_main(info, lambda: lock_run_dir(cfg.run_dir))
            dist_utils.on_main(info, lambda: (check_run_dir(cfg, force_config), check_options(cfg.run_dir, options)))
            run.log = setup_logger(Path(cfg.run_dir) if info.is_main else None, console=info.is_main)
            run.log.info(precision.line())
            run.resume()
            dist_utils.on_main(info, lambda: (write_run_config(cfg, run.iteration), write_options(cfg.run_dir, options)))
            result = run.fit()
            dist_utils.all_gather_object(None)  # the ranks leave the group together, once rank 0 wrote the encoder
            return result
        finally:
            run.trainer.close()
            if lock is not None:
                lock.close()


class _PretrainRun:
    """One pretraining in its run directory: the pretrainer, the loader and the position within the epoch."""

    def __init__(self, cfg: Config, options: PretrainOptions, info: DistInfo, progress: bool):
        self.cfg, self.options, self.info, self.progress = cfg, options, info, progress
        self.folder = RunFolder(cfg.run_dir)
        self.log = setup_logger(None, console=info.is_main)
        paths = image_paths(options.images)
        dist_utils.seed_everything(cfg.train.seed)  # the same initial weights on every rank
        self.trainer = Pretrainer(cfg, options, info)
        dist_utils.seed_everything(cfg.train.seed, info.rank)
        unit = self.trainer.unit
        self.crop = unit * max(1, options.crop // unit)
        self.loader = pretrain_loader(paths, self.crop, options.batch_size, cfg.train.seed, cfg.data.workers,
                                      info.rank, info.world_size)
        self.epoch, self.epoch_iter, self.loss = 0, 0, float("nan")

    @property
    def iteration(self) -> int:
        return self.trainer.iteration

    def resume(self) -> None:
        """Continue from the newest checkpoint pair that loads; metrics past it are dropped."""
        pair = newest_pair(self.cfg.run_dir)
        if pair is not None:
            self.trainer.load_state(pair.model_state, pair.state)
            self.epoch, self.epoch_iter, self.loss = pair.state["epoch"], pair.state["epoch_iter"], pair.state["loss"]
            self.log.info("resuming %s at iteration %d (epoch %d, batch %d) from %s", self.cfg.run_dir,
                          self.iteration, self.epoch, self.epoch_iter, pair.source)
        if self.info.is_main:
            truncate_metrics(Path(self.cfg.run_dir), self.iteration)
        self.resumed_at = self.iteration

    def fit(self) -> dict:
        """Step to `options.iters`, then write the encoder file; a stop signal saves `latest` and raises
        TrainingInterrupted."""
        total, info = self.options.iters, self.info
        what = "distillation" if self.options.teacher else "masked image modelling"
        self.log.info("pretraining %s by %s on %d images, %d iterations (crop %d, batch %d x %d process(es) on %s)",
                      self.cfg.model.encoder, what, len(self.loader.dataset), total, self.crop,
                      self.options.batch_size, info.world_size, info.device)
        writer = MetricsWriter(Path(self.cfg.run_dir), purge_after=self.iteration) if info.is_main else None
        bar = progress_bar(total=total, initial=self.iteration, desc="pretrain", enabled=self.progress and info.is_main,
                           every=self.cfg.train.log_every)
        started, stop = time.time(), 0
        try:
            with StopRequest() as request:
                while self.iteration < total and not stop:
                    stop = self.run_epoch(bar, writer, request)
                if stop:
                    self.save()
                    raise TrainingInterrupted(f"stopped by {signal.Signals(stop).name} at iteration {self.iteration}; "
                                              f"saved {self.folder.weights()}, run the same command to continue", stop)
        finally:
            bar.close()
            if writer:
                writer.close()
        if self.iteration > self.resumed_at:  # a finished run, run again, rewrites nothing
            self.save()
            self.save_encoder()
        self.log.info("done: %d iterations in %.1f s, last loss %.4f; encoder weights %s", self.iteration,
                      time.time() - started, self.loss, self.folder.weights(ENCODER))
        return {"iteration": self.iteration, "loss": self.loss, "encoder": self.folder.weights(ENCODER)}

    def run_epoch(self, bar, writer, request) -> int:
        """The current epoch's remaining steps; returns the stop signal the ranks agreed on (0: none)."""
        self.loader.sampler.set_epoch(self.epoch)
        for batch in skip_batches(self.loader, self.epoch_iter):
            record = self.trainer.step(batch)
            self.epoch_iter, self.loss = self.epoch_iter + 1, record["loss"]
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", refresh=False)
            bar.update(1)
            if writer and (self.iteration % self.cfg.train.log_every == 0 or self.iteration == 1):
                writer.write({"split": "pretrain", "iter": self.iteration, "epoch": self.epoch, **record})
            stop = dist_utils.max_over_ranks(request.signum or 0)
            if self.iteration >= self.options.iters:
                return 0  # the last step: finish and save
            if stop:
                return stop
            if self.iteration % self.cfg.train.checkpoint_every == 0:
                self.save()
        self.epoch, self.epoch_iter = self.epoch + 1, 0
        return 0

    def save(self) -> None:
        """Write `latest` at the current position (every rank calls it: each rank's RNG state is gathered)."""
        rngs = dist_utils.all_gather_object(dist_utils.get_rng_state())
        if self.info.is_main:
            state = {**self.trainer.state_dict(), "iteration": self.iteration, "epoch": self.epoch,
                     "epoch_iter": self.epoch_iter, "loss": self.loss, "rng": rngs, "world_size": self.info.world_size}
            save_checkpoint(self.cfg.run_dir, self.trainer.model.state_dict(), self.cfg, state)

    def save_encoder(self) -> None:
        """The encoder alone under `encoder.` (the segmenter's names), with the run's config: `_load_ours` reads it."""
        if self.info.is_main:
            tensors = {f"encoder.{key}": value for key, value in self.trainer.model.encoder.state_dict().items()}
            save_weights(self.folder.weights(ENCODER), tensors, self.cfg,
                         extra={"iteration": str(self.iteration), "pretrain": "distill" if self.options.teacher
                                else "mim"})
