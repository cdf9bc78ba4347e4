"""Colouring class-index masks: palettes, colour masks and image/mask overlays."""
from __future__ import annotations

import numpy as np


def colorize(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Class-index mask (H, W) -> RGB (H, W, 3) uint8; indices beyond the palette (e.g. 255) are black."""
    table = np.zeros((max(256, len(palette)), 3), dtype=np.uint8)
    table[: len(palette)] = palette
    return table[mask]


def overlay(image: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Side by side: the image | the image blended with its colour mask, (H, 2W, 3) uint8."""
    blended = (image.astype(np.float32) * (1 - alpha) + color.astype(np.float32) * alpha).round().astype(np.uint8)
    return np.concatenate([image, blended], axis=1)
