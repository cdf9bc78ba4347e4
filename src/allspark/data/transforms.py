"""Training augmentation of the release (METHODS.md 2) with albumentations (the model's normalisation: `data.normalize`)."""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

from allspark.data.io import IGNORE_INDEX
from allspark.data.rescale import LongSideRescale
from allspark.distributed import derive_seeds


def seed_steps(compose, seed: int) -> None:
    """Seed an albumentations Compose, each step with its own child of `seed` (set_random_seed alone gives
    every step the same seed, so e.g. flip and blur would always fire together)."""
    compose.set_random_seed(seed)
    children = derive_seeds(len(compose.transforms), seed)
    for step, child in zip(compose.transforms, children.tolist()):
        step.set_random_seed(child)


def colour_steps() -> list:
    """The colour part of the augmentation (METHODS.md 2): jitter p 0.8, grey p 0.2, Gaussian blur p 0.5; labeled images
    get it after the geometric part, and so do the strong views of unlabeled images (recipe.strong_views)."""
    return [
        A.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.25, p=0.8),
        A.ToGray(p=0.2),
        A.GaussianBlur(blur_limit=0, sigma_limit=(0.1, 2.0), p=0.5),
    ]


class TrainTransform:
    """Random long-side rescale 0.5..2.0, pad (image 0, mask 255) + random crop, flip; colour ops if `colour`.

    Works on uint8 arrays; the rescale is the release's (`rescale.LongSideRescale`: PIL bilinear with
    antialiasing for images, PIL nearest for masks).
    """

    def __init__(self, crop_size: int, colour: bool, seed: int | None = None):
        steps = [
            LongSideRescale(ratio_range=(0.5, 2.0)),
            A.PadIfNeeded(min_height=crop_size, min_width=crop_size, position="top_left",
                          border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE_INDEX),
            A.RandomCrop(crop_size, crop_size),
            A.HorizontalFlip(p=0.5),
        ]
        if colour:
            steps += colour_steps()
        self.compose = A.Compose(steps, seed=seed)

    def reseed(self, seed: int) -> None:
        """Restart the random stream from `seed`; the training loaders do so per sample, so a sample's
        augmentation depends on its seed alone."""
        seed_steps(self.compose, seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> image (S, S, 3) uint8, mask (S, S) uint8 with 255 on padding.

        Without a mask (unlabeled), an all-zero mask rides along, so its 255s mark exactly the padded
        pixels, aligned with the image by construction: `valid = mask != 255`.
        """
        carried = np.zeros(image.shape[:2], np.uint8) if mask is None else mask
        out = self.compose(image=image, mask=carried)
        return out["image"], out["mask"]
