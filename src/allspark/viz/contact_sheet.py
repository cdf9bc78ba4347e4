"""The contact sheet of `allspark suggest`: each chosen image beside its predicted mask, with its rank and score
parts, and the class legend, so a person sees why the images were picked."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from allspark.data.colors import colorize, legend_image

CELL = 160  # the longer side of each image (and of its mask) on the sheet, in pixels
CAPTION = 30  # caption height under each pair
COLUMNS = 3  # image | mask pairs per row


def _thumb(pixels: np.ndarray, resample) -> Image.Image:
    image = Image.fromarray(pixels)
    scale = CELL / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)


def contact_sheet(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], captions: Sequence[str],
                  palette: np.ndarray, names: Sequence[str]) -> Image.Image:
    """A grid of (image | colour mask) pairs with a caption under each, the legend below the grid."""
    rows = max(1, -(-len(images) // COLUMNS))
    pair_w, pair_h = 2 * CELL + 8, CELL + CAPTION
    legend = legend_image(palette, names)
    sheet = Image.new("RGB", (max(COLUMNS * pair_w, legend.width), rows * pair_h + legend.height + 4), "white")
    draw = ImageDraw.Draw(sheet)
    for number, (pixels, mask, caption) in enumerate(zip(images, masks, captions)):
        left, top = (number % COLUMNS) * pair_w, (number // COLUMNS) * pair_h
        sheet.paste(_thumb(pixels, Image.BILINEAR), (left, top))
        sheet.paste(_thumb(colorize(mask, palette), Image.NEAREST), (left + CELL + 2, top))
        for line_number, line in enumerate(caption.splitlines()[:2]):
            draw.text((left + 2, top + CELL + 2 + 12 * line_number), line, fill="black")
    sheet.paste(legend, (0, rows * pair_h + 4))
    return sheet


def save_contact_sheet(path: str | Path, images, masks, captions, palette, names) -> Path:
    """Write `contact_sheet(...)` as a PNG; returns the path."""
    path = Path(path)
    contact_sheet(images, masks, captions, palette, names).save(path)
    return path
