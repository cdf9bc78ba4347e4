"""Score variants of `allspark suggest` tried in the study (issue 22), kept out of the library until one wins.

Each variant changes one part of the library's score and keeps the rest (`suggest.selection`): the per-pixel
uncertainty (margin instead of entropy), its pooling (top-k pixels instead of class-balanced), the rare-class lift
(weighted by each class's predicted pixel share instead of the rarest class present), or the model that scores
(the round-0 student instead of its EMA teacher); `library` is the library's own score, as a check (its picks are
`allspark suggest --strategy both`'s). `pick` returns the chosen lines in the list format, best first.

    python -m benchmarks.studies.suggest_variants --checkpoint RUN --count 6 --out DIR \\
        [--variants margin topk share student]

With --truth, also prints each variant's picks' true class pixel shares (a diagnostic that reads the pool's
masks, which a user would not have; it chooses nothing).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch

from allspark.data.io import read_list, read_mask
from allspark.data.normalize import normalize_image
from allspark.models.weights import load_model
from allspark.suggest.scoring import LastFeature, labeled_class_counts, load_pixels, probs_and_features
from allspark.suggest.selection import (class_balanced_uncertainty, class_rarity, combined_score, entropy_map,
                                        image_rarity, select)
from allspark.suggest.teacher import load_teacher

VARIANTS = ("library", "margin", "topk", "share", "student")
TOP_SHARE = 0.1  # topk: the mean over the 10 % most uncertain pixels of an image


def margin_map(probs: np.ndarray) -> np.ndarray:
    """1 - (top-1 minus top-2 probability) per pixel: 0 = certain, 1 = a tie between two classes."""
    top2 = np.partition(probs, -2, axis=0)[-2:]
    return 1.0 - (top2[1] - top2[0])


def topk_pool(values: np.ndarray) -> float:
    """The mean of the TOP_SHARE largest values: an image's doubt where it is most in doubt, whatever its area."""
    flat = values.ravel()
    k = max(1, int(round(TOP_SHARE * flat.size)))
    return float(np.partition(flat, -k)[-k:].mean())


def share_rarity(counts: np.ndarray, rarity: np.ndarray) -> float:
    """The rarity of each predicted class weighted by its share of the image: an image with much of a rare class
    lifts more than one with a sliver of it."""
    return float((rarity * counts).sum() / max(counts.sum(), 1.0))


def variant_scores(probs: np.ndarray, rarity: np.ndarray) -> dict[str, float]:
    """Every uncertainty-side variant's score of one image from its softmax map (K, H, W)."""
    k = probs.shape[0]
    pred = probs.argmax(0)
    entropy = entropy_map(probs)
    unc, counts = class_balanced_uncertainty(entropy, pred, k)
    margin, _ = class_balanced_uncertainty(margin_map(probs), pred, k)
    rare = image_rarity(counts, rarity)
    return {"library": combined_score(unc, rare), "margin": combined_score(margin, rare),
            "topk": combined_score(topk_pool(entropy), rare),
            "share": combined_score(unc, share_rarity(counts, rarity))}


def _passes(model: torch.nn.Module, root: Path, images: list[str], device: str):
    """(softmax map (K, H, W), pooled encoder feature (C,)) of each of `images` under `model`, one at a time."""
    with LastFeature(model.encoder) as hook:
        for image in images:
            pixels = normalize_image(load_pixels(root / image, 1024))[None].to(device)
            probs, feat = probs_and_features(model, pixels, hook)
            yield probs[0], feat[0]


def score_all(model: torch.nn.Module, root: Path, images: list[str], rarity: np.ndarray, device: str
              ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(variant -> score per image, pooled features (N, C)) of `images` under `model`."""
    scores: dict[str, list[float]] = {}
    feats = []
    for probs, feat in _passes(model, root, images, device):
        for name, value in variant_scores(probs, rarity).items():
            scores.setdefault(name, []).append(value)
        feats.append(feat)
    return {name: np.array(values) for name, values in scores.items()}, np.stack(feats)


def pick(checkpoint: str | Path, count: int, variants: list[str], strategy: str = "both", device: str = "cpu"
         ) -> dict[str, list[str]]:
    """variant -> the `count` chosen lines of the run's unlabeled list (list format, best first)."""
    teacher, cfg, _, _ = load_teacher(checkpoint, "latest", device)
    root = Path(cfg.data.root)
    entries = read_list(root / cfg.data.unlabeled_list, need_masks=False)
    labeled = read_list(root / cfg.data.labeled_list, need_masks=True)
    rarity = class_rarity(labeled_class_counts(root, root / cfg.data.labeled_list, cfg.model.num_classes),
                          cfg.model.num_classes)
    images = [image for image, _ in entries]
    lines = [" ".join(part for part in entry if part) for entry in entries]
    chosen = {}
    models = {"teacher": teacher}
    if "student" in variants:
        models["student"] = load_model(checkpoint, "latest", device)[0]  # the student alone, no EMA teacher
    for who, model in models.items():
        scores, feats = score_all(model, root, images, rarity, device)
        anchors = np.stack([feat for _, feat in _passes(model, root, [image for image, _ in labeled], device)])
        names = ["student"] if who == "student" else [v for v in variants if v != "student"]
        for name in names:
            order = select(scores["library" if name == "student" else name], feats, count, strategy, anchors)
            chosen[name] = [lines[i] for i in order]
    return chosen


def true_shares(root: Path, lines: list[str], num_classes: int) -> np.ndarray:
    """The true class pixel shares over the masks of `lines` (diagnostic only)."""
    counts = np.zeros(num_classes)
    for line in lines:
        mask = read_mask(root / line.split()[1]).ravel()
        counts += np.bincount(mask[mask < num_classes], minlength=num_classes)
    return counts / counts.sum()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--strategy", default="both")
    p.add_argument("--truth", nargs="*", default=None, help="also print true class shares of these list files")
    a = p.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = pick(a.checkpoint, a.count, a.variants, a.strategy)
    for name, lines in chosen.items():
        (out / f"{name}.txt").write_text("".join(f"{line}\n" for line in lines))
    if a.truth is not None:
        _, cfg, _, _ = load_teacher(a.checkpoint, "latest")
        root = Path(cfg.data.root)
        groups = {**chosen, **{Path(f).stem: Path(f).read_text().split("\n")[:-1] for f in a.truth}}
        with open(out / "truth.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            for name, lines in groups.items():
                shares = true_shares(root, lines, cfg.model.num_classes)
                writer.writerow([name, *np.round(shares, 4)])
                print(name, " ".join(f"{s:.3f}" for s in shares))


if __name__ == "__main__":
    main()
