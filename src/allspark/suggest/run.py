"""`allspark suggest`: score every unlabeled image with a trained model and rank which to label next.

Streamed: images are read and scored a batch at a time (`scoring`); each rank appends its rows (uncertainty and
predicted pixels per class) and pooled encoder features to its own files under OUT/scoring/ (`store`) as they are
computed, so memory holds one batch plus a feature vector per image, and a killed run resumes where its files end
and ranks the same. Rows are keyed by image, so a changed list scores only its new images. Under torchrun each rank
scores every world_size-th image not yet stored; rank 0 then lifts the stored rows by the current labeled masks,
selects (`selection`) and writes the outputs (`outputs`)."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from allspark.config.schema import Config, config_to_dict
from allspark.data.io import read_list
from allspark.data.layouts import class_names_and_palette
from allspark.distributed import all_gather_object, distributed, on_main
from allspark.errors import InputError
from allspark.labeling.classes import ClassSet
from allspark.labeling.export import write_exports
from allspark.labeling.label_studio import LOCAL_FILES
from allspark.precision import Precision, autocast, resolve_amp
from allspark.suggest.outputs import SHEET_MAX, Suggestion, chosen_predictions, write_outputs
from allspark.suggest.scoring import anchor_features, labeled_class_counts, score_pool, score_row
from allspark.suggest.selection import class_rarity, select
from allspark.suggest.store import check_source, keep_current, read_scored, source_key, stamp, stored_images
from allspark.suggest.teacher import load_teacher, model_digest

Say = Callable[[str], None]
NOT_IN_FORWARD = ("pretrained", "freeze_encoder")  # model settings that leave the trained model's outputs alone


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

    def images(self) -> list[str]:
        """The distinct images, in list order: what the store's rows are keyed by."""
        return [self.entries[i][0] for i in self.indices]


def _pool(cfg: Config, weights: Path, list_path: str | Path | None, labeled_list: str | Path | None, count: int,
          root: Path) -> _Pool:
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


def _open_store(out: Path, model, cfg: Config, what: str, pool: _Pool, root: Path, max_side: int, amp: str,
                force: bool) -> tuple[int, int]:
    """Rank 0's part before scoring: refuse stored rows of another model, trim what a kill left, drop the rows of
    images no longer listed or changed since; returns (rows kept, rows dropped)."""
    architecture = {key: value for key, value in config_to_dict(cfg)["model"].items() if key not in NOT_IN_FORWARD}
    check_source(out, source_key(model_digest(model), what, architecture, max_side, amp), force)
    return keep_current(out, {image: stamp(root / image) for image in pool.images()})


def _rank(model, cfg: Config, root: Path, pool: _Pool, out: Path, count: int, strategy: str, max_side: int,
          device) -> tuple[list[dict], np.ndarray]:
    """(a row of score parts per distinct image in list order, the chosen rows' places best first): the stored
    rows lifted by the current labeled masks, then `select`."""
    scored = read_scored(out)
    rarity, names = class_rarity(pool.counts, cfg.model.num_classes), class_names_and_palette(cfg)[0]
    table = [{"image": image, "mask": mask or "", **score_row(scored[image][0], rarity, names)}
             for image, mask in (pool.entries[i] for i in pool.indices)]
    features = np.stack([scored[image][1] for image in pool.images()])
    anchors = None
    if pool.labeled and strategy != "uncertainty":
        anchors = anchor_features(model, root, pool.labeled, max_side, device)
    order = select(np.array([float(row["score"]) for row in table]), features, count, strategy, anchors)
    return table, order


def _say_counts(say: Say, pool: _Pool, kept: int, dropped: int, what: str, weights: Path) -> None:
    total = len(pool.indices)
    say(f"scoring {total - kept} of {total} images with {what} of {weights}"
        + (f" ({kept} scored before)" if kept else "")
        + (f"; dropped the scores of {dropped} images no longer in the list or changed since" if dropped else ""))


def _predict_chosen(model, cfg: Config, root: Path, out: Path, chosen: list[dict], max_side: int, device,
                    exports: Sequence[str], model_name: str, image_prefix: str) -> tuple[list, list[Path]]:
    """One pass over the chosen images: (the contact sheet's triples, the labelling tools' files written)."""
    sheet: list = []
    predicted = chosen_predictions(model, root, chosen, max_side, device, sheet)
    if not exports:
        list(islice(predicted, SHEET_MAX))
        return sheet, []
    classes = ClassSet.of(*class_names_and_palette(cfg))
    paths = write_exports(out, exports, [row["image"] for row in chosen], predicted, classes, model_name,
                          image_prefix)
    return sheet, paths


@contextmanager
def _precision(amp: str, info) -> Iterator[Precision]:
    """The concrete mode of `amp` on this rank's device, with its autocast around the block."""
    precision = resolve_amp(amp, info.device, key="--amp")
    with autocast(info.device, precision.mode):
        yield precision


def suggest(checkpoint: str | Path, out: str | Path, count: int, list_path: str | Path | None = None,
            root: str | Path | None = None, labeled_list: str | Path | None = None, which: str = "best",
            strategy: str = "both", batch_size: int = 1, max_side: int = 1024, device: str = "auto",
            force: bool = False, progress: bool = True, say: Say = _silent, exports: Sequence[str] = (),
            image_prefix: str = LOCAL_FILES, amp: str = "auto") -> Suggestion | None:
    """Rank the images of `list_path` (default: the run's unlabeled list; paths relative to `root`, default the
    run's data.root) for labelling and write OUT/suggested.txt (`count` lines), OUT/scores.csv, the scoring files
    and the `exports` (labeling.export.FORMATS; Label Studio reaches the images as `image_prefix` + their path).
    Under torchrun each rank scores every world_size-th image; rank 0 ranks and returns the Suggestion, the others
    None. `labeled_list` (default: the run's) gives the class shares and the images the chosen ones should differ
    from. `amp` is the forward passes' precision (allspark.precision); the scores themselves are fp32."""
    with distributed(device) as info, _precision(amp, info) as precision:
        model, cfg, weights, what = load_teacher(checkpoint, which, info.device)
        root = Path(root) if root is not None else Path(cfg.data.root)
        pool = _pool(cfg, weights, list_path, labeled_list, count, root)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        kept = on_main(info, lambda: _open_store(out, model, cfg, what, pool, root, max_side, precision.mode,
                                                  force))
        if info.is_main:  # once the inputs are known good: a refused one gets its single error line
            say(precision.line())
            _say_counts(say, pool, *kept, what, weights)
        done = stored_images(out)
        mine = [i for i in pool.indices if pool.entries[i][0] not in done][info.rank::info.world_size]
        score_pool(model, root, pool.entries, out, mine, batch_size, max_side, info.device, info.rank, progress)
        all_gather_object(None)  # every rank's rows are on disk
        if not info.is_main:
            return None
        table, order = _rank(model, cfg, root, pool, out, count, strategy, max_side, info.device)
        suggested, scores_path = write_outputs(out, table, order)
        chosen = [table[i] for i in order]
        sheet, paths = _predict_chosen(model, cfg, root, out, chosen, max_side, info.device, exports,
                                       f"{weights.name} ({what})", image_prefix)
        names, palette = class_names_and_palette(cfg)
        lift = ("rare-class lift from the labeled masks" if pool.counts is not None
                else "no labeled masks: no rare-class lift")
        return Suggestion(chosen, suggested, scores_path, sheet, names, palette,
                          f"{what} of {weights}; strategy {strategy}; {lift}", paths)
