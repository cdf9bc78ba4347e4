"""What `allspark suggest` hands back: OUT/suggested.txt (the chosen lines, best first), OUT/scores.csv (every
image's score parts and rank) and the images and masks of the contact sheet."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from allspark.runs.atomic import atomic_write
from allspark.suggest.scoring import predict_one

SCORE_FIELDS = ("rank", "image", "mask", "uncertainty", "rarity", "score", "classes")  # OUT/scores.csv
SHEET = "contact_sheet.png"  # OUT/contact_sheet.png, written by the command from the Suggestion
SHEET_MAX = 24  # images on the contact sheet (the best of the chosen)


@dataclass
class Suggestion:
    """What `suggest` wrote and what the contact sheet shows."""
    chosen: list[dict]  # the rows of the chosen images, best first
    suggested: Path
    scores: Path
    sheet_images: list[np.ndarray]  # the first SHEET_MAX chosen images (uint8) and their predicted masks
    sheet_masks: list[np.ndarray]
    class_names: list[str]
    palette: np.ndarray
    note: str


def _write_scores(path: str, table: list[dict], rank_of: dict[int, int]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, SCORE_FIELDS)
        writer.writeheader()
        for place, row in enumerate(table):
            writer.writerow({"rank": rank_of.get(place, ""), **{key: row[key] for key in SCORE_FIELDS[1:]}})


def write_outputs(out: Path, table: list[dict], order: np.ndarray) -> tuple[Path, Path]:
    """OUT/scores.csv (every row of `table`, its rank among the chosen or empty) and OUT/suggested.txt (the chosen
    rows' lines, best first), both from the same rows. The old suggested.txt and contact sheet go first and
    suggested.txt comes last, each file replaced in one step, so a kill leaves no suggestion that disagrees with
    scores.csv."""
    suggested, scores = out / "suggested.txt", out / "scores.csv"
    suggested.unlink(missing_ok=True)
    (out / SHEET).unlink(missing_ok=True)
    atomic_write(scores, lambda tmp: _write_scores(tmp, table, {int(place): n for n, place in enumerate(order, 1)}))
    lines = [" ".join(part for part in (table[i]["image"], table[i]["mask"]) if part) for i in order]
    atomic_write(suggested, lambda tmp: Path(tmp).write_text("".join(f"{line}\n" for line in lines)))
    return suggested, scores


def sheet_pairs(model: torch.nn.Module, paths: Sequence[Path], max_side: int, device
                ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(images, predicted masks) of the first SHEET_MAX of `paths`, the chosen images best first."""
    pairs = [predict_one(model, path, max_side, device)[:2] for path in paths[:SHEET_MAX]]
    return [image for image, _ in pairs], [mask for _, mask in pairs]
