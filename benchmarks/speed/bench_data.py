"""Data loading throughput: labeled + unlabeled samples per second at crop 513 on the synthetic set.

    .venv/bin/python -m benchmarks.speed.bench_data [--workers 0 2] [--batches 20]
"""
from __future__ import annotations

import argparse
import tempfile
from collections import deque
from itertools import islice
from pathlib import Path

from allspark.config.loading import config_from_dict
from allspark.data.loaders import build_labeled_loader, build_unlabeled_loader
from allspark.data.splits import make_split
from allspark.data.synthetic import generate_synthetic
from benchmarks.timing import seconds


def measure(root: Path, workers: int, batches: int, crop: int, batch_size: int) -> float:
    """Samples (labeled + unlabeled) per second over `batches` zipped batch pairs, after one warm-up pair."""
    cfg = config_from_dict({
        "method": "semi", "model": {"ablation": "none", "num_classes": 5, "crop_size": crop},
        "data": {"layout": "synthetic", "root": str(root), "labeled_list": "labeled.txt",
                 "unlabeled_list": "unlabeled.txt", "workers": workers},
        "train": {"batch_size": batch_size}})
    unlabeled = build_unlabeled_loader(cfg)
    labeled = build_labeled_loader(cfg, length=len(unlabeled.dataset))
    pairs = zip(labeled, unlabeled)  # the set holds more than batches + 1 pairs (main sizes it)
    next(pairs)
    took = seconds(lambda: deque(islice(pairs, batches), maxlen=0))
    return 2 * batch_size * batches / took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batches", type=int, default=20, help="timed batch pairs per setting")
    parser.add_argument("--crop", type=int, default=513)
    parser.add_argument("--batch-size", type=int, default=2, help="per branch, as in the Pascal config")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        images = 2 * args.batch_size * (args.batches + 1) + 8
        root = Path(tmp)
        took = seconds(lambda: generate_synthetic(root, num_train=images, num_val=0, size=(500, 375), seed=0))
        print(f"synthetic set: {images} images of 500x375 in {took:.1f} s")
        make_split(root / "train.txt", root, count=images // 4, seed=0)
        for workers in args.workers:
            rate = measure(root, workers, args.batches, args.crop, args.batch_size)
            print(f"crop {args.crop}, batch {args.batch_size}+{args.batch_size}, workers {workers}: "
                  f"{rate:.1f} samples/s (labeled + unlabeled)")


if __name__ == "__main__":
    main()
