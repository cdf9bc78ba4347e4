"""Extra views of an unlabeled sample for the recipes (README, recipes): strong views and CutMix boxes.

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


def release_cutmix_box(size: int, prob: float, rng: np.random.Generator) -> torch.Tensor:
    """(size, size) bool, a box drawn as UniMatch (V1 and V2) draw theirs: with probability `prob`, an area uniform
    in BOX_AREA of the crop, then height / width uniform (not log-uniform) in BOX_ASPECT, sides truncated, and a
    top-left corner uniform over the crop, the ratio and corner drawn again until the box fits. Taller boxes are
    the likelier (about 3 in 4), and large ones lose more draws to the crop border."""
    box = torch.zeros(size, size, dtype=torch.bool)
    if rng.random() > prob:
        return box
    area = rng.uniform(*BOX_AREA) * size * size
    while True:
        aspect = rng.uniform(*BOX_ASPECT)
        height, width = int(math.sqrt(area * aspect)), int(math.sqrt(area / aspect))
        x, y = rng.integers(0, size), rng.integers(0, size)
        if x + width <= size and y + height <= size:
            break
    box[y:y + height, x:x + width] = True
    return box


BOX_SAMPLERS = {"symmetric": cutmix_box, "release": release_cutmix_box}  # recipe.cutmix_boxes


class UnlabeledViews:
    """The extra keys of an unlabeled sample, per student view (recipe.views): "strong" (3, S, S), the weak view with
    the colour part of the augmentation on top (same geometry, so the teacher's pseudo-labels fit it pixel for
    pixel), and "box" (S, S) bool, the view's CutMix box; a second view adds "strong2" and "box2", drawn apart
    (UniMatch V2's two strong views)."""

    def __init__(self, crop_size: int, strong: bool, cutmix_prob: float, views: int = 1, boxes: str = "symmetric"):
        self.crop_size, self.cutmix_prob, self.draw_box = crop_size, cutmix_prob, BOX_SAMPLERS[boxes]
        self.colours = [A.Compose(colour_steps()) for _ in range(views)] if strong else []
        self.rngs = [np.random.default_rng(0) for _ in range(views)]

    def reseed(self, seed: int) -> None:
        """Restart from the sample's seed; each view's colour steps and box draw from their own children of it,
        apart from the geometric steps (which use `seed` itself). The first view's children are those a one-view
        run draws, so adding a second view leaves the first as it was."""
        seeds = derive_seeds(2 * len(self.rngs), seed, 1).tolist()  # colour, box, colour2, box2
        for view, colour in enumerate(self.colours):
            seed_steps(colour, seeds[2 * view])
        self.rngs = [np.random.default_rng(seeds[2 * view + 1]) for view in range(len(self.rngs))]

    def __call__(self, weak: np.ndarray) -> dict[str, torch.Tensor]:
        """The extra keys for the weak view `weak` (S, S, 3) uint8."""
        extra = {}
        for view, rng in enumerate(self.rngs):
            suffix = str(view + 1) if view else ""
            if self.colours:
                extra["strong" + suffix] = normalize_image(self.colours[view](image=weak)["image"])
            if self.cutmix_prob > 0:
                extra["box" + suffix] = self.draw_box(self.crop_size, self.cutmix_prob, rng)
        return extra
