"""The labeled training pipeline of the release and ours, compared in distribution (no training).

    python benchmarks/parity_pipeline.py --data /path/to/demo_data [--samples 3000]

Draws N augmented labeled crops from each side (the release's own SemiDataset through the CPU harness of
`../shared/reference/harness`; ours `ListDataset` + `TrainTransform`) and prints per-image statistics,
mean and standard error: padded fraction, brightness, contrast and saturation (0..255), sharpness (mean
|horizontal difference| between valid neighbours), grey images, class fractions. A statistic that differs by several
standard errors marks a pipeline difference.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's allspark
# allspark before the harness: the harness's stand-in torchvision must not reach transformers
from allspark.data.io import IGNORE_INDEX  # noqa: E402
from allspark.data.datasets import ListDataset  # noqa: E402
from allspark.data.normalize import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from allspark.data.transforms import TrainTransform  # noqa: E402

CROP, NUM_CLASSES = 97, 4


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="demo_data")
    p.add_argument("--harness", default=str(ROOT.parent / "shared/reference/harness"))
    p.add_argument("--samples", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def image_stats(image: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """Per-crop statistics of a normalised (3, S, S) image and its (S, S) mask."""
    pixels = image * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    pixels = pixels * 255  # (3, S, S) in 0..255
    valid = mask != IGNORE_INDEX
    values = pixels[:, valid]  # (3, V)
    pairs = valid[:, 1:] & valid[:, :-1]
    sharpness = (pixels[:, :, 1:] - pixels[:, :, :-1]).abs().mean(0)[pairs].mean()
    chroma = values.max(0).values - values.min(0).values  # (V,) 0 on grey pixels
    classes = [float((mask[valid] == c).float().mean()) for c in range(NUM_CLASSES)]
    return [1 - float(valid.float().mean()), float(values.mean()), float(values.std()), float(chroma.mean()),
            float(sharpness), float(chroma.max() < 1.0), *classes]


NAMES = ["padded fraction", "brightness", "contrast (std)", "saturation (max - min channel)", "sharpness",
         "grey images", *(f"class {c} fraction" for c in range(NUM_CLASSES))]


def release_samples(args) -> list[list[float]]:
    if not (Path(args.harness) / "official.py").is_file():
        raise SystemExit(f"parity_pipeline: the release harness is not at {args.harness}; pass --harness")
    sys.path.insert(0, str(Path(args.harness)))
    import official

    released = official.load_official()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    data = Path(args.data).resolve()
    dataset = released.SemiDataset("demo", str(data), "train_l", CROP, str(data / "splits/labeled.txt"),
                                   nsample=args.samples)
    return [image_stats(*dataset[i]) for i in range(args.samples)]


def our_samples(args) -> list[list[float]]:
    data = Path(args.data).resolve()
    transform = TrainTransform(CROP, colour=True, seed=args.seed)
    dataset = ListDataset(data, data / "splits/labeled.txt", "labeled", NUM_CLASSES, transform=transform)
    stats = []
    for i in range(args.samples):
        sample = dataset[i % len(dataset)]
        stats.append(image_stats(sample["image"], sample["mask"]))
    return stats


def main() -> None:
    args = parse_args()
    sides = {"release": np.array(release_samples(args)), "ours": np.array(our_samples(args))}
    print(f"{args.samples} labeled crops of {CROP} px per side; mean +- standard error")
    print("| statistic | release | ours | difference / s.e. |")
    print("|---|---|---|---|")
    for k, name in enumerate(NAMES):
        means = {s: v[:, k].mean() for s, v in sides.items()}
        errors = {s: v[:, k].std() / np.sqrt(len(v)) for s, v in sides.items()}
        z = (means["ours"] - means["release"]) / max(np.hypot(errors["ours"], errors["release"]), 1e-12)
        print(f"| {name} | {means['release']:.4f} +- {errors['release']:.4f} | "
              f"{means['ours']:.4f} +- {errors['ours']:.4f} | {z:+.1f} |")


if __name__ == "__main__":
    main()
