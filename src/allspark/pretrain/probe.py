"""A cheap score of a pretrained encoder: a frozen-encoder probe, the segmentation head alone trained for a short
fixed budget on a labeled list (`model.freeze_encoder`, UniMatch V2's lock_backbone), its validation mIoU."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from allspark.config.loading import load_config
from allspark.data.io import read_list
from allspark.engine.loop import train


@dataclass(frozen=True)
class Probe:
    labeled_list: str  # relative to data.root (the config's, or `root`)
    val_list: str
    iters: int = 200
    root: str | None = None


def probe_overrides(probe: Probe, encoder: Path, run_dir: Path, root: str, batch_size: int) -> list[str]:
    """Overrides of the pretrain run's config for the probe: SupBaseline, frozen encoder from `encoder`, `iters`
    steps, one evaluation at the end, in `run_dir`."""
    per_epoch = max(1, len(read_list(Path(root) / probe.labeled_list, need_masks=True)) // batch_size)
    epochs = math.ceil(probe.iters / per_epoch)
    return ["method=sup", "model.freeze_encoder=true", f"model.pretrained={encoder}", f"run_dir={run_dir}",
            f"data.root={root}", f"data.labeled_list={probe.labeled_list}", f"data.val_list={probe.val_list}",
            "data.unlabeled_list=", f"train.max_iters={probe.iters}", f"train.epochs={epochs}",
            f"train.eval_every={epochs}", f"train.checkpoint_every={probe.iters}"]


def run_probe(probe: Probe, config: str, overrides: list[str], encoder: Path, run_dir: Path, device: str = "auto",
              progress: bool = True) -> float:
    """Train the probe (resumable, a run folder of its own) and return its validation mIoU."""
    base = load_config(config, overrides)
    root = probe.root or base.data.root
    cfg = load_config(config, [*overrides, *probe_overrides(probe, encoder, run_dir, root, base.train.batch_size)])
    return train(cfg, device=device, progress=progress)["miou"]
