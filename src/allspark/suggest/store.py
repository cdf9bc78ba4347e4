"""The resumable score store under OUT/scoring/: each rank appends its rows (CSV) and pooled features (raw float32)
to its own files as they are computed, so a killed run resumes where its files end; `source.json` says which
checkpoint and list the stored scores come from."""
from __future__ import annotations

import csv
import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from allspark.errors import UsageError

FIELDS = ("index", "image", "mask", "uncertainty", "rarity", "score", "classes", "dim")  # OUT/scoring/rows.R.csv


@dataclass
class Parts:
    """The files one rank appends to: rows (CSV) and features (raw float32, one row per CSV row)."""
    rows: Path
    features: Path


def parts_of(out: Path, rank: int) -> Parts:
    return Parts(out / "scoring" / f"rows.{rank}.csv", out / "scoring" / f"features.{rank}.f32")


def all_parts(out: Path) -> list[Parts]:
    """The files of every rank that scored into OUT (a resumed run may have another world size)."""
    return [parts_of(out, int(path.name.split(".")[1])) for path in sorted((out / "scoring").glob("rows.*.csv"))]


def read_scored(out: Path) -> tuple[dict[int, dict], dict[int, np.ndarray]]:
    """Every row and feature vector under OUT/scoring/ (any number of ranks), by list index."""
    rows, features = {}, {}
    for parts in all_parts(out):
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


def trim(parts: Parts) -> int:
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


@contextmanager
def appending(out: Path, rank: int) -> Iterator[Callable[[list[dict], np.ndarray], None]]:
    """append(rows, features (N, C)) onto this rank's files, trimmed first; each call writes the features, then
    the rows with their width (`dim`), each flushed, so a kill leaves rows <= features (see `trim`)."""
    parts = parts_of(out, rank)
    parts.rows.parent.mkdir(parents=True, exist_ok=True)
    new_file = trim(parts) == 0
    with open(parts.rows, "a", newline="") as rows_file, open(parts.features, "ab") as feats_file:
        writer = csv.DictWriter(rows_file, FIELDS)
        if new_file:
            writer.writeheader()

        def append(rows: list[dict], features: np.ndarray) -> None:
            feats_file.write(np.ascontiguousarray(features, dtype=np.float32).tobytes())
            feats_file.flush()
            writer.writerows([{**row, "dim": features.shape[1]} for row in rows])
            rows_file.flush()
        yield append


def source_key(weights: Path, list_path: Path, max_side: int) -> dict:
    """What the stored scores were computed from; another checkpoint or list makes them stale."""
    stat = weights.stat()
    return {"weights": str(weights.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "list": str(list_path.resolve()), "max_side": max_side}


def check_source(out: Path, key: dict, force: bool) -> None:
    """Start OUT/scoring/ afresh with `force`; refuse stored scores of another checkpoint or list; trim the files."""
    scoring, record = out / "scoring", out / "scoring" / "source.json"
    if force and scoring.exists():
        shutil.rmtree(scoring)
    if record.is_file() and json.loads(record.read_text()) != key:
        raise UsageError(f"{out} holds scores of another checkpoint or list ({record}); pass --force to score again "
                         "or another --out")
    scoring.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(key, indent=1) + "\n")
    for parts in all_parts(out):  # what a kill left half-written goes before any rank reads the files
        trim(parts)
