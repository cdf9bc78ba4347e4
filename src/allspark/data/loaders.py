"""Data loaders of METHODS.md 2: labeled list repeated to the unlabeled length, independent shuffles, DDP shares."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler

from allspark.config.schema import Config
from allspark.data.checks import class_count_problem
from allspark.data.datasets import ListDataset
from allspark.data.layouts import mask_converter
from allspark.data.splits import splits_command
from allspark.data.transforms import TrainTransform
from allspark.data.views import UnlabeledViews
from allspark.distributed import derive_seed, derive_seeds
from allspark.errors import ConfigError

_LABELED, _UNLABELED, _VAL = 0, 1, 2  # stream ids, mixed into seeds so the streams never share randomness


class TrainSampler(Sampler[int]):
    """`length` indices per epoch over `num_items` items, this rank's disjoint share.

    Concatenated fresh permutations (each item appears floor or ceil of length/num_items times),
    reshuffled every epoch from (seed, epoch); rank r takes positions r, r+W, ... of the first
    length - length % W, so every rank gets the same count.
    """

    def __init__(self, num_items: int, length: int | None = None, rank: int = 0, world_size: int = 1, seed: int = 0):
        if num_items <= 0:
            raise ValueError("cannot sample from an empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}); got {rank}")
        self.num_items, self.length = num_items, length or num_items
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length // self.world_size

    def __iter__(self):
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        rounds = -(-self.length // self.num_items)
        order = torch.cat([torch.randperm(self.num_items, generator=generator) for _ in range(rounds)])
        order = order[: len(self) * self.world_size]
        return iter(order[self.rank::self.world_size].tolist())


class AugmentedSampler(TrainSampler):
    """A TrainSampler yielding (index, augmentation seed), the seed a function of (seed, epoch, position in the
    epoch): a sample's crop, flip and colours then depend neither on the worker that loads it nor on where a
    run resumed, which makes resume exact."""

    def __iter__(self):
        seeds = derive_seeds(len(self) * self.world_size, self.seed, self.epoch)
        return zip(super().__iter__(), seeds[self.rank::self.world_size].tolist())


class SeededListDataset(ListDataset):
    """A training ListDataset read by the (index, seed) keys of AugmentedSampler: the transform restarts
    from the key's seed for every sample."""

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        self.transform.reseed(seed)
        if self.views is not None:
            self.views.reseed(seed)
        return super().__getitem__(index)


class ShardSampler(Sampler[int]):
    """Validation: rank r visits r, r+W, r+2W, ...; each item exactly once over the group, no padding."""

    def __init__(self, num_items: int, rank: int = 0, world_size: int = 1):
        self.num_items, self.rank, self.world_size = num_items, rank, world_size

    def __len__(self) -> int:
        return len(range(self.rank, self.num_items, self.world_size))

    def __iter__(self):
        return iter(range(self.rank, self.num_items, self.world_size))


def _stream_seed(cfg: Config, stream: int, rank: int) -> int:
    return derive_seed(cfg.train.seed, stream, rank)


def _dataset(cfg: Config, key: str, mode: str, transform: TrainTransform | None,
             kind: type[ListDataset] = ListDataset, views: UnlabeledViews | None = None) -> ListDataset:
    list_path = getattr(cfg.data, key)
    if not list_path:
        raise ConfigError(f"key 'data.{key}' is empty; set it to a list file (`allspark splits` makes "
                          "labeled/unlabeled lists from a training list)")
    root = Path(cfg.data.root)
    if key != "val_list" and not (root / list_path).is_file():
        out = (root / list_path).parent
        raise ConfigError(f"key 'data.{key}': list file {root / list_path} not found; make the split lists with "
                          f"`{splits_command(cfg.data.root, cfg.data.layout, out)}` (or with another --out DIR, "
                          "then data.labeled_list=DIR/labeled.txt data.unlabeled_list=DIR/unlabeled.txt)")
    mismatch = class_count_problem(cfg.data.layout, root, cfg.model.num_classes)
    if mismatch:
        raise ConfigError(mismatch, "model.num_classes")
    return kind(root, root / list_path, mode, cfg.model.num_classes, transform,
                convert_mask=mask_converter(cfg.data.layout), skip_bad=cfg.data.skip_bad_samples, views=views)


def _leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """A worker's init: ignore SIGINT (Ctrl-C reaches the whole process group), which the training process answers
    by finishing its step and saving (engine/stop.py); on SIGTERM (a scheduler's, or the loader's own shutdown)
    exit with status 0, which the training process does not take for a crashed worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))


def _loader(dataset: ListDataset, sampler: Sampler, batch_size: int, cfg: Config, seed: int, drop_last: bool):
    workers = cfg.data.workers
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
                      pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
                      generator=torch.Generator().manual_seed(seed), worker_init_fn=_leave_stop_signals_to_the_trainer)


def _train_loader(cfg, key, mode, stream, rank, world_size, length):
    seed = _stream_seed(cfg, stream, rank)
    transform = TrainTransform(cfg.model.crop_size, colour=mode == "labeled" and cfg.data.labeled_colour, seed=seed)
    recipe = cfg.recipe
    views = None
    if mode == "unlabeled" and (recipe.strong_views or recipe.cutmix_prob > 0):
        views = UnlabeledViews(cfg.model.crop_size, recipe.strong_views, recipe.cutmix_prob, recipe.views,
                               recipe.cutmix_boxes)
    dataset = _dataset(cfg, key, mode, transform, SeededListDataset, views)
    sampler = AugmentedSampler(len(dataset), length, rank, world_size, seed=derive_seed(cfg.train.seed, stream))
    per_step = cfg.train.batch_size * cfg.train.accumulate  # the trainer splits it into micro-batches
    if len(sampler) < per_step:
        raise ConfigError(f"key 'data.{key}': {len(sampler)} samples per process per epoch "
                          f"({dataset.list_path}, {world_size} processes) is fewer than train.batch_size "
                          f"{cfg.train.batch_size} x train.accumulate {cfg.train.accumulate}, so drop_last leaves "
                          "no batch")
    return _loader(dataset, sampler, per_step, cfg, seed, drop_last=True)


def build_labeled_loader(cfg: Config, rank: int = 0, world_size: int = 1, length: int | None = None) -> DataLoader:
    """Labeled batches {"image" (B,3,S,S), "mask" (B,S,S) int64}; `length` samples per epoch over all ranks."""
    return _train_loader(cfg, "labeled_list", "labeled", _LABELED, rank, world_size, length)


def build_unlabeled_loader(cfg: Config, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Unlabeled batches {"image" (B,3,S,S), "valid" (B,S,S) bool}: geometric augmentation only (the weak view);
    with recipe.strong_views also "strong" (B,3,S,S), with recipe.cutmix_prob > 0 "box" (B,S,S) bool; with
    recipe.views 2 also "strong2" and "box2", the second view's."""
    return _train_loader(cfg, "unlabeled_list", "unlabeled", _UNLABELED, rank, world_size, None)


def build_val_loader(cfg: Config, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Full-size validation samples, batch 1; each image once over the process group."""
    dataset = _dataset(cfg, "val_list", "val", None)
    sampler = ShardSampler(len(dataset), rank, world_size)
    return _loader(dataset, sampler, 1, cfg, _stream_seed(cfg, _VAL, rank), drop_last=False)
