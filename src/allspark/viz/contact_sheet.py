"""The contact sheet of `allspark suggest`: each chosen image, its predicted mask and its per-pixel uncertainty side by
side, its rank and score parts under them, and the class legend, so a person sees at a glance what the model
doubts and why the image was picked."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from allspark.data.colors import colorize, legend_image

CELL = 160  # the longer side of each image (and of its mask and uncertainty map) on the sheet, in pixels
GAP = 4  # between the three pictures of a suggestion, and between them and their caption
FONT = 15  # caption type size, in pixels
LINE = 19  # caption line height
CAPTION = 2 * LINE  # two caption lines under each suggestion
ROW_GAP = 28  # below a caption, before the next row: wider than GAP, so a caption sits by its own pictures
COLUMNS = 2  # suggestions per row
HEADER = 30  # the title line above the grid
TITLE = "each: image | predicted mask | uncertainty (dark: sure, bright: the model doubts)"
TRIPLE_W = 3 * CELL + 2 * GAP  # one suggestion's pictures
COLUMN_W = TRIPLE_W + 24  # a suggestion's column, with the space before the next
HEAT = colormaps["inferno"]  # uncertainty: dark = certain, bright = the model doubts


def _thumb(pixels: np.ndarray, resample) -> Image.Image:
    image = Image.fromarray(pixels)
    scale = CELL / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)


def uncertainty_image(uncertainty: np.ndarray) -> np.ndarray:
    """A per-pixel uncertainty map in [0, 1] (H, W) as RGB (H, W, 3) uint8 on the `HEAT` scale."""
    return (HEAT(np.clip(uncertainty, 0, 1))[..., :3] * 255).round().astype(np.uint8)


def _pictures(triple: tuple[np.ndarray, np.ndarray, np.ndarray], palette: np.ndarray) -> list[Image.Image]:
    pixels, mask, uncertainty = triple
    return [_thumb(pixels, Image.BILINEAR), _thumb(colorize(mask, palette), Image.NEAREST),
            _thumb(uncertainty_image(uncertainty), Image.BILINEAR)]


def contact_sheet(triples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], captions: Sequence[str],
                  palette: np.ndarray, names: Sequence[str]) -> Image.Image:
    """A grid of (image | colour mask | uncertainty map) with a caption under each, right under its row's
    pictures (a row is as high as its highest picture), the legend below the grid."""
    pictures = [_pictures(triple, palette) for triple in triples]
    heights = [max([p.height for triple in pictures[r:r + COLUMNS] for p in triple] + [1])
               for r in range(0, max(1, len(pictures)), COLUMNS)]
    tops = np.cumsum([HEADER] + [h + GAP + CAPTION + ROW_GAP for h in heights]).tolist()
    legend = legend_image(palette, names)
    sheet = Image.new("RGB", (max(COLUMNS * COLUMN_W, legend.width), tops[-1] + legend.height), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default(size=FONT)
    draw.text((0, 4), TITLE, fill="black", font=font)
    for number, (triple, caption) in enumerate(zip(pictures, captions)):
        row = number // COLUMNS
        left, top = (number % COLUMNS) * COLUMN_W, tops[row]
        for place, picture in enumerate(triple):
            sheet.paste(picture, (left + place * (CELL + GAP), top))
        for line_number, line in enumerate(caption.splitlines()[:2]):
            draw.text((left, top + heights[row] + GAP + LINE * line_number), line, fill="black", font=font)
    sheet.paste(legend, (0, tops[-1]))
    return sheet


def save_contact_sheet(path: str | Path, triples, captions, palette, names) -> Path:
    """Write `contact_sheet(...)` as a PNG; returns the path."""
    path = Path(path)
    contact_sheet(triples, captions, palette, names).save(path)
    return path
