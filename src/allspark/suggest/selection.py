"""Which images to label next, from per-image scores and features: the pooled uncertainty of one image's
prediction, the lift of classes rare in the labeled set, and greedy k-center selection mixed with the score.

Written here rather than taken from a library: baal's heuristics (entropy, margin, BALD) reduce a segmentation
map with a plain mean, which lets a large uncertain background decide, and scikit-learn has no greedy k-center;
each part below is a few lines of numpy."""
from __future__ import annotations

import numpy as np

STRATEGIES = ("both", "uncertainty", "diversity")  # the study's ablations: score x distance, score, distance
MIN_CLASS_SHARE = 0.002  # a predicted class counts in an image from this share of its pixels (not a few stray ones)


def entropy_map(probs: np.ndarray) -> np.ndarray:
    """Per-pixel entropy of softmax probabilities (K, H, W), divided by log K: 0 = certain, 1 = uniform."""
    k = probs.shape[0]
    p = np.clip(probs, 1e-12, 1.0)
    return -(p * np.log(p)).sum(0) / np.log(k)


def present_classes(counts: np.ndarray) -> np.ndarray:
    """Boolean (K,): the classes predicted on at least MIN_CLASS_SHARE of the pixels (at least the largest)."""
    present = counts >= MIN_CLASS_SHARE * counts.sum()
    present[np.argmax(counts)] = True
    return present


def class_balanced_uncertainty(entropy: np.ndarray, pred: np.ndarray, num_classes: int) -> tuple[float, np.ndarray]:
    """(the mean over predicted classes of the mean entropy on each class's pixels, pixel counts per class).

    Class-balanced rather than a plain mean or top-k: each predicted region weighs the same, so an image that is
    mostly uncertain background does not outrank one whose small object is uncertain, and a few stray pixels of a
    class (under MIN_CLASS_SHARE) do not count as a region of their own."""
    counts = np.bincount(pred.ravel(), minlength=num_classes).astype(np.float64)
    sums = np.bincount(pred.ravel(), weights=entropy.ravel().astype(np.float64), minlength=num_classes)
    present = present_classes(counts)
    return float((sums[present] / counts[present]).mean()), counts


def class_rarity(labeled_counts: np.ndarray | None, num_classes: int) -> np.ndarray:
    """(K,) in [0, 1]: 1 - share_c / largest share, from the labeled masks' pixel counts per class; 0 for every class
    when there are no counts (no lift). A class absent from the labeled set gets 1, the most common 0."""
    if labeled_counts is None or labeled_counts.sum() == 0:
        return np.zeros(num_classes)
    share = labeled_counts / labeled_counts.sum()
    return 1.0 - share / share.max()


def image_rarity(counts: np.ndarray, rarity: np.ndarray) -> float:
    """The rarity of the rarest class an image's prediction holds (over MIN_CLASS_SHARE of its pixels)."""
    return float(rarity[present_classes(counts)].max())


def combined_score(uncertainty: float, rarity: float) -> float:
    """uncertainty x (1 + rarity): a rare class lifts an image by up to twice its uncertainty, never past an image
    twice as uncertain, so the model's doubt stays the first reason."""
    return uncertainty * (1.0 + rarity)


def select(scores: np.ndarray, features: np.ndarray, count: int, strategy: str = "both",
           anchors: np.ndarray | None = None) -> np.ndarray:
    """Indices of `count` images, best first.

    uncertainty: the highest scores. diversity: greedy k-center (Sener and Savarese 2018) on the L2-normalised
    features: each pick is the image farthest from the labeled `anchors` and the images picked so far. both: each
    pick maximises score / max score x distance / max distance, the product so that an exact duplicate of a picked
    image (distance 0) comes last whatever its score, and an uncertain image close to the labeled set is held back.
    Ties go to the earlier image in the list, so a ranking depends only on the scores and features."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    n = len(scores)
    if not 1 <= count <= n:
        raise ValueError(f"count must be in [1, {n}]; got {count}")
    if strategy == "uncertainty":
        return np.argsort(-scores, kind="stable")[:count]
    features = features.astype(np.float32)
    distance = np.full(n, np.inf)
    if anchors is not None and len(anchors):
        for anchor in anchors.astype(np.float32):
            distance = np.minimum(distance, np.linalg.norm(features - anchor, axis=1))
    elif strategy == "diversity":  # nothing labeled to be far from: start from the image farthest from the mean
        distance = np.linalg.norm(features - features.mean(0), axis=1)
    relative = scores / scores.max() if scores.max() > 0 else np.ones(n)
    chosen: list[int] = []
    taken = np.zeros(n, bool)
    for _ in range(count):
        finite = distance if np.isfinite(distance).all() else np.ones(n)  # first pick without anchors: score alone
        value = finite / finite.max() if finite.max() > 0 else np.zeros(n)
        if strategy == "both":
            value = value * relative
        value = np.where(taken, -1.0, value)
        pick = int(np.argmax(value))
        chosen.append(pick)
        taken[pick] = True
        distance = np.minimum(distance, np.linalg.norm(features - features[pick], axis=1))
    return np.array(chosen)
