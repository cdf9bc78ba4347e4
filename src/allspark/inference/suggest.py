"""`allspark suggest`: score every unlabeled image with a trained model and rank which to label next.

Streamed: images are read and scored a batch at a time; each rank appends its rows (score parts) and pooled
encoder features to its own files under OUT/scoring/ as they are computed, so memory holds one batch plus a
feature vector per image, and a killed run resumes where its files end and ranks the same. The selection
(`inference.selection`) then runs on rank 0 over the stored values alone."""
from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from allspark.config.schema import MIN_CROP, Config
from allspark.data.io import IGNORE_INDEX, read_image, read_list, read_mask
from allspark.data.layouts import class_names_and_palette
from allspark.data.normalize import normalize_image
from allspark.distributed import all_gather_object, init_distributed, on_main
from allspark.errors import DataError, InputError, UsageError
from allspark.inference.selection import (class_balanced_uncertainty, class_rarity, combined_score, entropy_map,
                                          image_rarity, present_classes, select)
from allspark.models.segmenter import AllSparkSegmenter
from allspark.models.weights import load_model, resolve_weights
from allspark.run_folder import RunFolder

FIELDS = ("index", "image", "mask", "uncertainty", "rarity", "score", "classes", "dim")  # OUT/scoring/rows.R.csv
SCORE_FIELDS = ("rank", *FIELDS[1:-1])  # OUT/scores.csv: the list index and feature width stay internal
SHEET_MAX = 24  # images on the contact sheet (the best of the chosen)
Say = Callable[[str], None]


def _silent(line: str) -> None:
    """The default `say`: the library prints nothing of its own."""


def load_teacher(checkpoint: str | Path, which: str = "best", device: torch.device | str = "cpu"
                 ) -> tuple[AllSparkSegmenter, Config, Path, str]:
    """(model in eval mode, config, weights file, which model it is). A run's `latest` with an EMA teacher in its
    training state gives the teacher (the better pseudo-labeller); `best` is the model `train.best_of` named."""
    weights = resolve_weights(checkpoint, which)
    model, cfg = load_model(weights, device=device)
    what = "the student"
    folder = RunFolder.of_weights(weights)
    if folder is not None and weights == folder.weights("latest") and folder.state("latest").is_file():
        ema = torch.load(folder.state("latest"), map_location="cpu", weights_only=True).get("ema")
        if ema:
            model.load_state_dict(ema, strict=False)  # the averaged tensors; the rest (memory) stays the student's
            what = "the EMA teacher"
    elif weights.name == "best.safetensors" and cfg.train.best_of == "ema":
        what = "the EMA teacher"
    return model, cfg, weights, what


def labeled_class_counts(root: Path, list_path: Path | None, num_classes: int) -> np.ndarray | None:
    """Pixel counts per class over the labeled masks (None without a readable labeled list), mask by mask."""
    if list_path is None or not list_path.is_file():
        return None
    counts = np.zeros(num_classes, np.int64)
    for _, mask_rel in read_list(list_path, need_masks=True):
        mask = read_mask(root / mask_rel).ravel()
        counts += np.bincount(mask[(mask != IGNORE_INDEX) & (mask < num_classes)], minlength=num_classes)
    return counts


def load_pixels(path: Path, max_side: int) -> np.ndarray:
    """The image as uint8 (H, W, 3), shrunk so its longer side is at most `max_side` (scoring needs no more)."""
    image = read_image(path)
    h, w = image.shape[:2]
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    if min(image.shape[:2]) < MIN_CROP:
        raise DataError(path, f"image is {image.shape[1]}x{image.shape[0]} px; the model needs at least {MIN_CROP} "
                        "px on each side")
    return image


class _LastFeature:
    """A forward hook on the encoder keeping its last feature map averaged over space, L2-normalised (N, C); a
    context manager that removes the hook on leaving."""

    def __init__(self, encoder: torch.nn.Module):
        self.value: torch.Tensor | None = None
        self.handle = encoder.register_forward_hook(self)

    def __enter__(self) -> _LastFeature:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def __call__(self, module, inputs, output) -> None:
        last = output[-1] if isinstance(output, (list, tuple)) else output
        pooled = last.float().mean(dim=(2, 3))
        self.value = pooled / pooled.norm(dim=1, keepdim=True).clamp(min=1e-12)


@torch.no_grad()
def probs_and_features(model: torch.nn.Module, images: torch.Tensor, hook: _LastFeature
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (N, K, H, W) and pooled encoder features (N, C) of normalised images, one pass."""
    probs = torch.softmax(model(images).float(), dim=1)
    return probs.cpu().numpy(), hook.value.cpu().numpy()


def predict_one(model: torch.nn.Module, path: Path, max_side: int, device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixels, predicted mask, pooled feature) of one image: the contact sheet's and the labeled images' pass."""
    pixels = load_pixels(path, max_side)
    with _LastFeature(model.encoder) as hook:
        probs, feats = probs_and_features(model, normalize_image(pixels)[None].to(device), hook)
    return pixels, probs[0].argmax(0), feats[0]


@dataclass
class _Parts:
    """The files one rank appends to: rows (CSV) and features (raw float32, one row per CSV row)."""
    rows: Path
    features: Path


def _parts(out: Path, rank: int) -> _Parts:
    return _Parts(out / "scoring" / f"rows.{rank}.csv", out / "scoring" / f"features.{rank}.f32")


def _all_parts(out: Path) -> list[_Parts]:
    """The files of every rank that scored into OUT (a resumed run may have another world size)."""
    return [_parts(out, int(path.name.split(".")[1])) for path in sorted((out / "scoring").glob("rows.*.csv"))]


def read_scored(out: Path) -> tuple[dict[int, dict], dict[int, np.ndarray]]:
    """Every row and feature vector under OUT/scoring/ (any number of ranks), by list index."""
    rows, features = {}, {}
    for parts in _all_parts(out):
        with open(parts.rows, newline="") as handle:
            done = list(csv.DictReader(handle))
        if not done:
            continue
        dim = int(done[0]["dim"])
        flat = np.fromfile(parts.features, dtype=np.float32, count=len(done) * dim)
        for number, row in enumerate(done):
            rows[int(row["index"])] = row
            features[int(row["index"])] = flat[number * dim:(number + 1) * dim]
    return rows, features


def _trim(parts: _Parts) -> int:
    """Cut the rows file after its last whole line and the feature file to one vector per row (a kill between the
    two writes leaves vectors without rows: features are written first); returns the rows done."""
    done = []
    if parts.rows.is_file():
        text = parts.rows.read_bytes()
        if not text.endswith(b"\n"):
            with open(parts.rows, "r+b") as handle:
                handle.truncate(text.rfind(b"\n") + 1)
        with open(parts.rows, newline="") as handle:
            done = list(csv.DictReader(handle))
    if parts.features.is_file():
        with open(parts.features, "r+b") as handle:
            handle.truncate(4 * len(done) * (int(done[0]["dim"]) if done else 0))
    return len(done)


def score_pool(model: torch.nn.Module, cfg: Config, root: Path, entries: Sequence[tuple[str, str | None]],
               out: Path, rarity: np.ndarray, indices: Sequence[int], batch_size: int = 1, max_side: int = 1024,
               device: torch.device | str = "cpu", rank: int = 0, progress: bool = True) -> int:
    """Score the images `entries[i]` for i in `indices` not yet in OUT/scoring/, appending each batch's rows and
    features to this rank's files as soon as they are computed; returns how many were scored now."""
    names = class_names_and_palette(cfg)[0]
    k = cfg.model.num_classes
    parts = _parts(out, rank)
    parts.rows.parent.mkdir(parents=True, exist_ok=True)
    new_file = _trim(parts) == 0
    bar = tqdm(total=len(indices), desc=f"suggest (rank {rank})" if rank else "suggest", unit="img",
               file=sys.stderr, disable=not progress)
    scored = 0
    with _LastFeature(model.encoder) as hook, bar, open(parts.rows, "a", newline="") as rows_file, \
            open(parts.features, "ab") as feats_file:
        writer = csv.DictWriter(rows_file, FIELDS)
        if new_file:
            writer.writeheader()
        batch: list[tuple[int, np.ndarray]] = []

        def flush() -> None:
            images = torch.stack([normalize_image(pixels) for _, pixels in batch]).to(device)
            probs, feats = probs_and_features(model, images, hook)
            rows = []
            for (index, _), prob in zip(batch, probs):
                pred = prob.argmax(0)
                uncertainty, counts = class_balanced_uncertainty(entropy_map(prob), pred, k)
                lift = image_rarity(counts, rarity)
                image_rel, mask_rel = entries[index]
                rows.append({"index": index, "image": image_rel, "mask": mask_rel or "",
                             "uncertainty": repr(uncertainty), "rarity": repr(lift),
                             "score": repr(combined_score(uncertainty, lift)),
                             "classes": "|".join(names[c] for c in np.flatnonzero(present_classes(counts))),
                             "dim": feats.shape[1]})
            feats_file.write(np.ascontiguousarray(feats, dtype=np.float32).tobytes())
            feats_file.flush()  # the features before their rows: a kill leaves rows <= features (see _trim)
            writer.writerows(rows)
            rows_file.flush()
            bar.update(len(batch))
            batch.clear()

        for index in indices:
            pixels = load_pixels(root / entries[index][0], max_side)
            if batch and (len(batch) == batch_size or pixels.shape != batch[0][1].shape):
                flush()
            batch.append((index, pixels))
            scored += 1
        if batch:
            flush()
    return scored


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


def _source_key(weights: Path, list_path: Path, max_side: int) -> dict:
    """What the stored scores were computed from; another checkpoint or list makes them stale."""
    stat = weights.stat()
    return {"weights": str(weights.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "list": str(list_path.resolve()), "max_side": max_side}


def _check_source(out: Path, key: dict, force: bool) -> None:
    """Start OUT/scoring/ afresh with `force`; refuse stored scores of another checkpoint or list; trim the files."""
    scoring, record = out / "scoring", out / "scoring" / "source.json"
    if force and scoring.exists():
        shutil.rmtree(scoring)
    if record.is_file() and json.loads(record.read_text()) != key:
        raise UsageError(f"{out} holds scores of another checkpoint or list ({record}); pass --force to score again "
                         "or another --out")
    scoring.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(key, indent=1) + "\n")
    for parts in _all_parts(out):  # what a kill left half-written goes before any rank reads the files
        _trim(parts)


def _write_outputs(out: Path, entries, rows: dict[int, dict], order: np.ndarray, indices: list[int]) -> tuple[Path, Path]:
    """OUT/suggested.txt (the chosen lines, best first, list format) and OUT/scores.csv (every image, its parts, its
    rank among the chosen or empty), each replaced in one step."""
    rank_of = {indices[i]: number for number, i in enumerate(order, 1)}
    suggested, scores = out / "suggested.txt", out / "scores.csv"
    lines = [" ".join(part for part in entries[indices[i]] if part) for i in order]
    tmp = suggested.with_suffix(".txt.tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines))
    os.replace(tmp, suggested)
    tmp = scores.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, SCORE_FIELDS)
        writer.writeheader()
        for index in indices:
            writer.writerow({"rank": rank_of.get(index, ""), **{key: rows[index][key] for key in SCORE_FIELDS[1:]}})
    os.replace(tmp, scores)
    return suggested, scores


def suggest(checkpoint: str | Path, out: str | Path, count: int, list_path: str | Path | None = None,
            root: str | Path | None = None, labeled_list: str | Path | None = None, which: str = "best",
            strategy: str = "both", batch_size: int = 1, max_side: int = 1024, device: str = "auto",
            force: bool = False, progress: bool = True, say: Say = _silent) -> Suggestion | None:
    """Rank the images of `list_path` (default: the run's unlabeled list; paths relative to `root`, default the
    run's data.root) for labelling and write OUT/suggested.txt (`count` lines), OUT/scores.csv and the scoring files.
    Under torchrun each rank scores every world_size-th image; rank 0 ranks and returns the Suggestion, the others
    None. `labeled_list` (default: the run's) gives the class shares and the images the chosen ones should differ
    from."""
    info = init_distributed(device)
    model, cfg, weights, what = load_teacher(checkpoint, which, info.device)
    root = Path(root) if root is not None else Path(cfg.data.root)
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
    labeled_entries = read_list(labeled_list, need_masks=True) if labeled_list and Path(labeled_list).is_file() else []
    counts = labeled_class_counts(root, Path(labeled_list) if labeled_entries else None, cfg.model.num_classes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    on_main(info, lambda: _check_source(out, _source_key(weights, list_path, max_side), force))  # others wait
    done, _ = read_scored(out)
    mine = [i for i in indices if i not in done][info.rank::info.world_size]
    rarity = class_rarity(counts, cfg.model.num_classes)
    if info.is_main:
        say(f"scoring {len(indices) - len(done)} of {len(indices)} images with {what} of {weights}"
            + (f" ({len(done)} scored before)" if done else ""))
    score_pool(model, cfg, root, entries, out, rarity, mine, batch_size, max_side, info.device, info.rank, progress)
    all_gather_object(None)  # every rank's rows are on disk
    if not info.is_main:
        return None
    rows, features = read_scored(out)
    scores = np.array([float(rows[i]["score"]) for i in indices])
    feats = np.stack([features[i] for i in indices])
    anchors = None
    if labeled_entries and strategy != "uncertainty":
        anchors = np.stack([predict_one(model, root / image, max_side, info.device)[2] for image, _ in labeled_entries])
    order = select(scores, feats, count, strategy, anchors)
    suggested, scores_path = _write_outputs(out, entries, rows, order, indices)
    sheet = [predict_one(model, root / entries[indices[i]][0], max_side, info.device)[:2] for i in order[:SHEET_MAX]]
    names, palette = class_names_and_palette(cfg)
    lift = "rare-class lift from the labeled masks" if counts is not None else "no labeled masks: no rare-class lift"
    note = f"{what} of {weights}; strategy {strategy}; {lift}"
    return Suggestion([rows[indices[i]] for i in order], suggested, scores_path, [image for image, _ in sheet],
                      [mask for _, mask in sheet], names, palette, note)
