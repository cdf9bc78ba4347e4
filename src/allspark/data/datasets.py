"""One list-file dataset for the labeled, unlabeled and validation streams (METHODS.md 2)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from allspark.data.io import IGNORE_INDEX, WrongLayoutDataError, load_sample, read_list
from allspark.data.normalize import normalize_image
from allspark.data.transforms import TrainTransform
from allspark.data.views import UnlabeledViews
from allspark.errors import DataError

log = logging.getLogger(__name__)

MODES = ("labeled", "unlabeled", "val")


class ListDataset(Dataset):
    """Samples of a list file (`image_path [mask_path]` per line, relative to `root`).

    labeled: {"image" (3,S,S), "mask" (S,S) int64}; unlabeled: {"image", "valid" (S,S) bool};
    val: full size {"image" (3,H,W), "mask" (H,W) int64, "name", "skipped", "problem"}; `views` adds the recipes'
    keys to unlabeled samples, from the augmented image (data/views.py). Each sample passes the checks of
    `io.load_sample`; a bad one raises DataError naming the file, or with `skip_bad` is logged and replaced
    (training) or left out of the metric with an all-ignore mask and named in "skipped" (validation); a mask of
    another layout (WrongLayoutDataError) is never skipped.
    """

    def __init__(self, root: str | Path, list_path: str | Path, mode: str, num_classes: int,
                 transform: TrainTransform | None = None, convert_mask: Callable | None = None,
                 skip_bad: bool = False, views: UnlabeledViews | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        if mode != "val" and transform is None:
            raise ValueError(f"{mode} samples need a TrainTransform (random crop to the training size)")
        self.root = Path(root)
        self.list_path = Path(list_path)
        self.entries = read_list(self.list_path, need_masks=mode != "unlabeled")
        self.mode, self.num_classes = mode, num_classes
        self.transform, self.convert_mask, self.skip_bad = transform, convert_mask, skip_bad
        self.views = views

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        for attempt in range(len(self.entries)):
            try:
                return self._load(index)
            except DataError as err:
                if not self.skip_bad or isinstance(err, WrongLayoutDataError):
                    raise
                if self.mode == "val":  # counted and named once the whole set is evaluated (engine/evaluate.py)
                    return self._ignored(index, err)
                log.warning("skipping bad sample (data.skip_bad_samples): %s", err)
                index = (index + 1) % len(self.entries)
        raise DataError(self.list_path, "every sample of this list failed its checks")

    def _load(self, index: int) -> dict:
        image_rel, mask_rel = self.entries[index]
        mask_path = self.root / mask_rel if mask_rel is not None and self.mode != "unlabeled" else None
        image, mask = load_sample(self.root / image_rel, mask_path, self.num_classes, self.convert_mask)
        if self.mode == "val":
            return {"image": normalize_image(image), "mask": torch.from_numpy(mask.astype(np.int64)),
                    "name": Path(image_rel).stem, "skipped": "", "problem": ""}
        image, mask = self.transform(image, mask)
        sample = {"image": normalize_image(image)}  # (3, S, S)
        if self.mode == "labeled":
            sample["mask"] = torch.from_numpy(mask.astype(np.int64))  # (S, S)
        else:
            sample["valid"] = torch.from_numpy(mask != IGNORE_INDEX)  # (S, S), False on padding
            if self.views is not None:
                sample.update(self.views(image))
        return sample

    def _ignored(self, index: int, err: DataError) -> dict:
        """A stand-in for an unreadable validation sample that adds nothing to the confusion matrix; "skipped" and
        "problem" name the file at fault (empty strings in every other validation sample)."""
        return {"image": torch.zeros(3, 32, 32), "mask": torch.full((32, 32), IGNORE_INDEX, dtype=torch.int64),
                "name": Path(self.entries[index][0]).stem, "skipped": err.path, "problem": err.problem}
