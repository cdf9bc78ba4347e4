"""`allspark pretrain`'s own options, beside the run config (which gives the encoder, seed, amp, logging): what it
learns from and how. They are written to the run folder's pretrain.json and a resumed run must repeat them."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

from allspark.errors import UsageError
from allspark.pretrain.masking import MASK_BLOCK, MASK_RATIO
from allspark.runs.atomic import atomic_write_text
from allspark.runs.checkpoints import has_checkpoint
from allspark.runs.folder import RunFolder

LR = 5e-4  # AdamW's peak lr: chosen for runs of a few hundred steps at batch 8 (SimMIM's scaled rule gives 1e-5)
WEIGHT_DECAY = 0.05  # SimMIM's and MAE's
WARMUP = 0.1  # share of the steps: SimMIM's 10 warm-up epochs of 100


@dataclass(frozen=True)
class PretrainOptions:
    images: str  # a folder of images or a list file
    iters: int = 1000
    batch_size: int = 8  # per process
    crop: int = 224  # rounded down to whole mask blocks
    lr: float = LR
    weight_decay: float = WEIGHT_DECAY
    warmup: float = WARMUP
    mask_ratio: float = MASK_RATIO
    mask_block: int = MASK_BLOCK
    teacher: str | None = None  # distil from this encoder instead of masked image modelling
    teacher_encoder: str | None = None  # the teacher's model.encoder name (default: the student's)

    def check(self) -> None:
        """A UsageError naming the first option out of its range."""
        problems = [(self.iters >= 1, "--iters must be at least 1"),
                    (self.batch_size >= 1, "--batch-size must be at least 1"),
                    (self.crop >= 32, "--crop must be at least 32"),
                    (self.lr > 0, "--lr must be positive"), (self.weight_decay >= 0, "--weight-decay must be >= 0"),
                    (0 <= self.warmup < 1, "--warmup is a share of the steps, in [0, 1)"),
                    (0 < self.mask_ratio < 1, "--mask-ratio must be in (0, 1)"),
                    (self.mask_block >= 1, "--mask-block must be at least 1")]
        for fine, problem in problems:
            if not fine:
                raise UsageError(f"{problem}; got {self}")

    def absolute(self) -> PretrainOptions:
        """The options with local paths absolute, as stored."""
        local = {key: os.path.abspath(value) for key in ("images", "teacher")
                 if (value := getattr(self, key)) and os.path.exists(value)}
        return dataclasses.replace(self, **local)


def check_options(run_dir: str, options: PretrainOptions) -> None:
    """Refuse (UsageError, naming the options) to continue a run that has a checkpoint with other options."""
    path = RunFolder(run_dir).pretrain_options
    if not path.is_file() or not has_checkpoint(run_dir):
        return
    saved, now = json.loads(path.read_text()), dataclasses.asdict(options)
    changed = [f"{key}: {saved.get(key)!r} -> {now[key]!r}" for key in now if saved.get(key) != now[key]]
    if changed:
        raise UsageError(f"run directory {run_dir} was pretrained with other options ({'; '.join(changed)}); use "
                         "another run_dir, or the same options to continue")


def write_options(run_dir: str, options: PretrainOptions) -> None:
    """pretrain.json, atomically."""
    atomic_write_text(RunFolder(run_dir).pretrain_options, json.dumps(dataclasses.asdict(options), indent=1) + "\n")
