"""What `allspark suggest` hands back: OUT/suggested.txt (the chosen lines, best first), OUT/scores.csv (every
image's score parts and rank), the images, masks and uncertainty maps of the contact sheet, and the chosen images'
predicted masks at their own size for the labelling tools' exports."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from allspark.labeling.export import CONFIG, CVAT_ZIP, TASKS, Predicted
from allspark.runs.atomic import atomic_write
from allspark.suggest.scoring import predict_one
from allspark.suggest.selection import entropy_map

SCORE_FIELDS = ("rank", "image", "mask", "uncertainty", "rarity", "score", "classes")  # OUT/scores.csv
SHEET = "contact_sheet.png"  # OUT/contact_sheet.png, written by the command from the Suggestion
SHEET_MAX = 24  # images on the contact sheet (the best of the chosen)


@dataclass
class Suggestion:
    """What `suggest` wrote and what the contact sheet shows."""
    chosen: list[dict]  # the rows of the chosen images, best first
    suggested: Path
    scores: Path
    sheet: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # the first SHEET_MAX chosen: (image, mask, uncertainty)
    class_names: list[str]
    palette: np.ndarray
    note: str
    exports: list[Path]  # the labelling tools' files (--export)


def _write_scores(path: str, table: list[dict], rank_of: dict[int, int]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, SCORE_FIELDS)
        writer.writeheader()
        for place, row in enumerate(table):
            writer.writerow({"rank": rank_of.get(place, ""), **{key: row[key] for key in SCORE_FIELDS[1:]}})


def write_outputs(out: Path, table: list[dict], order: np.ndarray) -> tuple[Path, Path]:
    """OUT/scores.csv (every row of `table`, its rank among the chosen or empty) and OUT/suggested.txt (the chosen
    rows' lines, best first), both from the same rows. The old suggested.txt, contact sheet and labelling-tool
    exports go first and suggested.txt comes last, each file replaced in one step, so a kill leaves no suggestion
    that disagrees with scores.csv."""
    suggested, scores = out / "suggested.txt", out / "scores.csv"
    for old in (suggested, out / SHEET, out / TASKS, out / CONFIG, out / CVAT_ZIP):
        old.unlink(missing_ok=True)
    atomic_write(scores, lambda tmp: _write_scores(tmp, table, {int(place): n for n, place in enumerate(order, 1)}))
    lines = [" ".join(part for part in (table[i]["image"], table[i]["mask"]) if part) for i in order]
    atomic_write(suggested, lambda tmp: Path(tmp).write_text("".join(f"{line}\n" for line in lines)))
    return suggested, scores


def at_image_size(mask: np.ndarray, path: Path) -> np.ndarray:
    """A mask predicted on the shrunk image (`--max-side`) at the image's own size (nearest neighbour), uint8."""
    with Image.open(path) as image:
        size = image.size
    mask = Image.fromarray(mask.astype(np.uint8))
    return np.asarray(mask if mask.size == size else mask.resize(size, Image.NEAREST))


def chosen_predictions(model: torch.nn.Module, root: Path, chosen: list[dict], max_side: int, device,
                       sheet: list) -> Iterator[Predicted]:
    """The chosen images' predicted masks at their own size, best first, one image at a time; the first SHEET_MAX
    also go to `sheet` as (image, mask, per-pixel uncertainty), shrunk as scored."""
    for number, row in enumerate(chosen):
        pixels, probs, _ = predict_one(model, root / row["image"], max_side, device)
        mask = probs.argmax(0)
        if number < SHEET_MAX:
            sheet.append((pixels, mask, entropy_map(probs)))
        yield Predicted(row["image"], at_image_size(mask, root / row["image"]), float(row["score"]))
