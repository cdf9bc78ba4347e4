"""Extra views of an unlabeled sample for the recipes (README, recipes): a strong view and a CutMix box.

Both are drawn from the sample's own seed, like its crop and flip, so a resumed run and any number of
loader workers see the same ones.
"""
from __future__ import annotations

import math

import albumentations as A
import numpy as np
import torch

from allspark.data.normalize import normalize_image
from allspark.data.transforms import colour_steps, seed_steps
from allspark.distributed import derive_seeds

BOX_AREA = (0.02, 0.4)  # a CutMix box covers this fraction of the crop, uniformly drawn
BOX_ASPECT = (0.3, 1 / 0.3)  # its height / width, log-uniformly drawn


def cutmix_box(size: int, prob: float, rng: np.random.Generator) -> torch.Tensor:
    """(size, size) bool: with probability `prob` a random box (area and aspect above) is True, else all False.
    The random numbers drawn do not depend on whether the box is kept."""
    keep, area, log_aspect, top, left = rng.random(5)
    box = torch.zeros(size, size, dtype=torch.bool)
    if keep >= prob:
        return box
    area = (BOX_AREA[0] + area * (BOX_AREA[1] - BOX_AREA[0])) * size * size
    lo, hi = math.log(BOX_ASPECT[0]), math.log(BOX_ASPECT[1])
    aspect = math.exp(lo + log_aspect * (hi - lo))
    height = min(size, max(1, round(math.sqrt(area * aspect))))
    width = min(size, max(1, round(math.sqrt(area / aspect))))
    y, x = int(top * (size - height + 1)), int(left * (size - width + 1))
    box[y:y + height, x:x + width] = True
    return box


class UnlabeledViews:
    """The extra keys of an unlabeled sample: "strong" (3, S, S), the weak view with the colour part of the
    augmentation on top (same geometry, so the teacher's pseudo-labels fit it pixel for pixel), and "box"
    (S, S) bool, the CutMix box of the sample."""

    def __init__(self, crop_size: int, strong: bool, cutmix_prob: float):
        self.crop_size, self.cutmix_prob = crop_size, cutmix_prob
        self.colour = A.Compose(colour_steps()) if strong else None
        self.rng = np.random.default_rng(0)

    def reseed(self, seed: int) -> None:
        """Restart from the sample's seed; the colour steps and the box draw from two children of it, apart
        from the geometric steps (which use `seed` itself)."""
        colour_seed, box_seed = derive_seeds(2, seed, 1).tolist()
        if self.colour is not None:
            seed_steps(self.colour, colour_seed)
        self.rng = np.random.default_rng(box_seed)

    def __call__(self, weak: np.ndarray) -> dict[str, torch.Tensor]:
        """The extra keys for the weak view `weak` (S, S, 3) uint8."""
        extra = {}
        if self.colour is not None:
            extra["strong"] = normalize_image(self.colour(image=weak)["image"])
        if self.cutmix_prob > 0:
            extra["box"] = cutmix_box(self.crop_size, self.cutmix_prob, self.rng)
        return extra
