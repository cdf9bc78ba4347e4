"""Colouring class-index masks: palettes, colour masks and image/mask overlays."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw


def colorize(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Class-index mask (H, W) -> RGB (H, W, 3) uint8; indices beyond the palette (e.g. 255) are black."""
    table = np.zeros((max(256, len(palette)), 3), dtype=np.uint8)
    table[: len(palette)] = palette
    return table[mask]


def overlay(image: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Side by side: the image | the image blended with its colour mask, (H, 2W, 3) uint8; blended in
    blocks of rows, so large images need no full-size float copies."""
    width = image.shape[1]
    out = np.concatenate([image, image], axis=1)
    for top in range(0, image.shape[0], 256):
        rows = slice(top, top + 256)
        blend = image[rows].astype(np.float32) * (1 - alpha) + color[rows].astype(np.float32) * alpha
        out[rows, width:] = blend.round()
    return out


def legend_entries(palette: np.ndarray, names: Sequence[str]) -> list[dict]:
    """[{index, name, color: [r, g, b]}] per class, for a legend sidecar."""
    return [{"index": i, "name": str(name), "color": [int(c) for c in palette[i]]} for i, name in enumerate(names)]


def legend_image(palette: np.ndarray, names: Sequence[str], row: int = 20) -> Image.Image:
    """One row per class: its colour swatch, then `index name` in black on white."""
    width = 2 * row + 8 + 7 * max([len(f"{i} {n}") for i, n in enumerate(names)] + [1])
    image = Image.new("RGB", (width, row * len(names)), "white")
    draw = ImageDraw.Draw(image)
    for i, name in enumerate(names):
        draw.rectangle((2, i * row + 2, 2 * row - 2, (i + 1) * row - 3), fill=tuple(int(c) for c in palette[i]),
                       outline="black")
        draw.text((2 * row + 4, i * row + 4), f"{i} {name}", fill="black")
    return image
