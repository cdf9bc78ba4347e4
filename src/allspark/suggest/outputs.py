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
from allspark.suggest.store import FIELDS

SCORE_FIELDS = ("rank", *FIELDS[1:-1])  # OUT/scores.csv: the list index and feature width stay internal
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


def _write_scores(path: str, rows: dict[int, dict], indices: list[int], rank_of: dict[int, int]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, SCORE_FIELDS)
        writer.writeheader()
        for index in indices:
            writer.writerow({"rank": rank_of.get(index, ""), **{key: rows[index][key] for key in SCORE_FIELDS[1:]}})


def write_outputs(out: Path, entries, rows: dict[int, dict], order: np.ndarray, indices: list[int]) -> tuple[Path, Path]:
    """OUT/suggested.txt (the chosen lines, best first, list format) and OUT/scores.csv (every image, its parts, its
    rank among the chosen or empty), each replaced in one step."""
    rank_of = {indices[i]: number for number, i in enumerate(order, 1)}
    suggested, scores = out / "suggested.txt", out / "scores.csv"
    lines = [" ".join(part for part in entries[indices[i]] if part) for i in order]
    atomic_write(suggested, lambda tmp: Path(tmp).write_text("".join(f"{line}\n" for line in lines)))
    atomic_write(scores, lambda tmp: _write_scores(tmp, rows, indices, rank_of))
    return suggested, scores


def sheet_pairs(model: torch.nn.Module, paths: Sequence[Path], max_side: int, device
                ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(images, predicted masks) of the first SHEET_MAX of `paths`, the chosen images best first."""
    pairs = [predict_one(model, path, max_side, device)[:2] for path in paths[:SHEET_MAX]]
    return [image for image, _ in pairs], [mask for _, mask in pairs]
