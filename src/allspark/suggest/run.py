"""`allspark suggest`: score every unlabeled image with a trained model and rank which to label next.

Streamed: images are read and scored a batch at a time (`scoring`); each rank appends its rows (score parts) and
pooled encoder features to its own files under OUT/scoring/ (`store`) as they are computed, so memory holds one
batch plus a feature vector per image, and a killed run resumes where its files end and ranks the same. Under
torchrun each rank scores every world_size-th image not yet stored; the selection (`selection`) then runs on rank 0
over the stored values alone and writes the outputs (`outputs`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from allspark.config.schema import Config
from allspark.data.io import read_list
from allspark.data.layouts import class_names_and_palette
from allspark.distributed import DistInfo, all_gather_object, distributed, on_main
from allspark.errors import InputError
from allspark.suggest.outputs import Suggestion, sheet_pairs, write_outputs
from allspark.suggest.scoring import anchor_features, labeled_class_counts, score_pool
from allspark.suggest.selection import class_rarity, select
from allspark.suggest.store import check_source, read_scored, source_key
from allspark.suggest.teacher import load_teacher

Say = Callable[[str], None]


def _silent(line: str) -> None:
    """The default `say`: the library prints nothing of its own."""


@dataclass
class _Pool:
    """The images to choose from and the labeled ones, as `suggest` resolved them."""
    list_path: Path
    entries: list[tuple[str, str | None]]
    indices: list[int]  # the first line of each distinct image
    labeled: list[tuple[str, str | None]]
    counts: np.ndarray | None  # labeled pixels per class; None without labeled masks


def _pool(cfg: Config, weights: Path, root: Path, list_path: str | Path | None, labeled_list: str | Path | None,
          count: int) -> _Pool:
    """The list to choose `count` images from (default: the run's unlabeled list) and the labeled list (default:
    the run's), read; raises InputError without a list or with fewer distinct images than `count`."""
    if list_path is None:
        if not cfg.data.unlabeled_list:
            raise InputError(f"{weights}: its run has no unlabeled list (data.unlabeled_list); pass --list")
        list_path = root / cfg.data.unlabeled_list
    list_path = Path(list_path)
    entries = read_list(list_path, need_masks=False)
    seen: set[str] = set()
    indices = [i for i, (image, _) in enumerate(entries) if not (image in seen or seen.add(image))]
    if count > len(indices):
        raise InputError(f"--count {count} is more than the {len(indices)} distinct images of {list_path}")
    if labeled_list is None and cfg.data.labeled_list:
        labeled_list = root / cfg.data.labeled_list
    labeled = read_list(labeled_list, need_masks=True) if labeled_list and Path(labeled_list).is_file() else []
    counts = labeled_class_counts(root, Path(labeled_list) if labeled else None, cfg.model.num_classes)
    return _Pool(list_path, entries, indices, labeled, counts)


def _my_share(pool: _Pool, done: dict[int, dict], info: DistInfo) -> list[int]:
    """This rank's images: every world_size-th of those not yet in the store, from its rank on."""
    return [i for i in pool.indices if i not in done][info.rank::info.world_size]


def suggest(checkpoint: str | Path, out: str | Path, count: int, list_path: str | Path | None = None,
            root: str | Path | None = None, labeled_list: str | Path | None = None, which: str = "best",
            strategy: str = "both", batch_size: int = 1, max_side: int = 1024, device: str = "auto",
            force: bool = False, progress: bool = True, say: Say = _silent) -> Suggestion | None:
    """Rank the images of `list_path` (default: the run's unlabeled list; paths relative to `root`, default the
    run's data.root) for labelling and write OUT/suggested.txt (`count` lines), OUT/scores.csv and the scoring files.
    Under torchrun each rank scores every world_size-th image; rank 0 ranks and returns the Suggestion, the others
    None. `labeled_list` (default: the run's) gives the class shares and the images the chosen ones should differ
    from."""
    with distributed(device) as info:
        model, cfg, weights, what = load_teacher(checkpoint, which, info.device)
        root = Path(root) if root is not None else Path(cfg.data.root)
        pool = _pool(cfg, weights, root, list_path, labeled_list, count)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        on_main(info, lambda: check_source(out, source_key(weights, pool.list_path, max_side), force))  # others wait
        done, _ = read_scored(out)
        if info.is_main:
            say(f"scoring {len(pool.indices) - len(done)} of {len(pool.indices)} images with {what} of {weights}"
                + (f" ({len(done)} scored before)" if done else ""))
        score_pool(model, cfg, root, pool.entries, out, class_rarity(pool.counts, cfg.model.num_classes),
                   _my_share(pool, done, info), batch_size, max_side, info.device, info.rank, progress)
        all_gather_object(None)  # every rank's rows are on disk
        if not info.is_main:
            return None
        rows, features = read_scored(out)
        scores = np.array([float(rows[i]["score"]) for i in pool.indices])
        feats = np.stack([features[i] for i in pool.indices])
        anchors = None
        if pool.labeled and strategy != "uncertainty":
            anchors = anchor_features(model, root, pool.labeled, max_side, info.device)
        order = select(scores, feats, count, strategy, anchors)
        suggested, scores_path = write_outputs(out, pool.entries, rows, order, pool.indices)
        images, masks = sheet_pairs(model, [root / pool.entries[pool.indices[i]][0] for i in order], max_side, info.device)
        names, palette = class_names_and_palette(cfg)
        lift = ("rare-class lift from the labeled masks" if pool.counts is not None
                else "no labeled masks: no rare-class lift")
        return Suggestion([rows[pool.indices[i]] for i in order], suggested, scores_path, images, masks, names, palette,
                          f"{what} of {weights}; strategy {strategy}; {lift}")
