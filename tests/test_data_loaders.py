"""Loaders and samplers: repeated labeled list, independent shuffles, disjoint DDP shares, val once per image."""
from collections import Counter

import pytest
import torch

from allspark.config.loading import config_from_dict
from allspark.data.loaders import (ShardSampler, TrainSampler, build_labeled_loader, build_unlabeled_loader,
                                   build_val_loader)
from allspark.data.splits import make_split
from allspark.data.synthetic import generate_synthetic
from allspark.errors import ConfigError


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = generate_synthetic(tmp_path_factory.mktemp("syn"), num_train=10, num_val=5, size=(40, 30), num_classes=4)
    make_split(root / "train.txt", root, count=4, seed=0)
    return root


def _cfg(root, **data):
    return config_from_dict({
        "method": "sup", "model": {"ablation": "none", "num_classes": 4, "crop_size": 32},
        "data": {"layout": "synthetic", "root": str(root), "labeled_list": "labeled.txt",
                 "unlabeled_list": "unlabeled.txt", "val_list": "val.txt", "workers": 0, **data},
        "train": {"batch_size": 2, "seed": 5}})


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_val_loader_visits_each_image_once(synthetic, world_size):
    cfg = _cfg(synthetic)
    names = []
    for rank in range(world_size):
        for batch in build_val_loader(cfg, rank, world_size):
            assert batch["image"].shape == (1, 3, 30, 40) and batch["mask"].shape == (1, 30, 40)
            assert batch["mask"].dtype == torch.int64
            names += batch["name"]
    assert sorted(names) == [f"val_{i:05d}" for i in range(5)]


@pytest.mark.parametrize("num_items,world_size", [(7, 1), (7, 2), (7, 3), (2, 3)])
def test_shard_sampler_partitions(num_items, world_size):
    shares = [list(ShardSampler(num_items, r, world_size)) for r in range(world_size)]
    assert sorted(sum(shares, [])) == list(range(num_items))
    assert [len(ShardSampler(num_items, r, world_size)) for r in range(world_size)] == [len(s) for s in shares]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_train_sampler_repeats_to_length_with_disjoint_shares(world_size):
    samplers = [TrainSampler(4, length=18, rank=r, world_size=world_size, seed=1) for r in range(world_size)]
    shares = [list(s) for s in samplers]
    assert all(len(share) == 18 // world_size == len(s) for share, s in zip(shares, samplers))
    counts = Counter(sum(shares, []))
    assert set(counts) == set(range(4)) and max(counts.values()) - min(counts.values()) <= 1
    plain = [set(TrainSampler(9, rank=r, world_size=world_size)) for r in range(world_size)]
    assert sum(len(p) for p in plain) == len(set().union(*plain))  # each item on one rank only


def test_train_sampler_epochs_and_seeds():
    sampler = TrainSampler(50, seed=0)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == sorted(first)


def test_labeled_and_unlabeled_orders_differ(synthetic):
    """METHODS.md 5: the two streams shuffle independently. Over the same images a shared seed would give the same
    order, and the same augmentation seeds, in every epoch."""
    (synthetic / "twin.txt").write_text((synthetic / "unlabeled.txt").read_text())
    cfg = _cfg(synthetic, labeled_list="twin.txt")
    labeled, unlabeled = build_labeled_loader(cfg, length=6), build_unlabeled_loader(cfg)
    for epoch in range(3):
        for loader in (labeled, unlabeled):
            loader.sampler.set_epoch(epoch)
        (order_l, seeds_l), (order_u, seeds_u) = (zip(*loader.sampler) for loader in (labeled, unlabeled))
        assert sorted(order_l) == sorted(order_u) == list(range(6))
        assert order_l != order_u, epoch
        assert not set(seeds_l) & set(seeds_u)


def test_train_batches(synthetic):
    cfg = _cfg(synthetic)
    labeled = build_labeled_loader(cfg, length=6)
    unlabeled = build_unlabeled_loader(cfg)
    assert len(labeled) == len(unlabeled) == 3
    for batch_l, batch_u in zip(labeled, unlabeled):
        assert batch_l["image"].shape == (2, 3, 32, 32) and batch_l["image"].dtype == torch.float32
        assert batch_l["mask"].shape == (2, 32, 32) and batch_l["mask"].dtype == torch.int64
        assert set(batch_l["mask"].unique().tolist()) <= {0, 1, 2, 3, 255}
        assert batch_u["valid"].shape == (2, 32, 32) and batch_u["valid"].dtype == torch.bool
        assert "mask" not in batch_u
    assert not all(batch["valid"].all() for batch in unlabeled)  # 40x30 images scaled < 32 get padding
    for loader in (labeled, unlabeled):
        loader.sampler.set_epoch(3)
        assert loader.sampler.epoch == 3


def test_too_few_samples_per_rank_is_a_clear_error(synthetic):
    with pytest.raises(ConfigError, match="fewer than train.batch_size 2"):
        build_labeled_loader(_cfg(synthetic), rank=0, world_size=4)
    with pytest.raises(ConfigError, match="data.val_list"):
        build_val_loader(_cfg(synthetic, val_list=""))


def test_workers_draw_different_augmentations(synthetic):
    (synthetic / "one.txt").write_text("images/train_00000.jpg masks/train_00000.png\n")
    cfg = _cfg(synthetic, labeled_list="one.txt", workers=2)
    cfg.train.batch_size = 1
    loader = build_labeled_loader(cfg, length=2)
    first, second = [batch["image"] for batch in loader]  # one from each worker, same source image
    assert not torch.equal(first, second)


def test_augmentation_does_not_depend_on_loader_workers(synthetic):
    """Each sample's augmentation comes from its own seed: the same batches with 0 or 2 workers, every epoch."""
    def batches(workers):
        loader = build_labeled_loader(_cfg(synthetic, workers=workers), length=8)
        out = []
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)
            out += [torch.cat([batch["image"].flatten(), batch["mask"].flatten().float()]) for batch in loader]
        return out

    plain, workers = batches(0), batches(2)
    assert all(torch.equal(a, b) for a, b in zip(plain, workers)) and len(plain) == 8
    assert not torch.equal(plain[0], plain[4])  # epoch 1 reshuffles and draws new crops
