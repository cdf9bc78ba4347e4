"""The resumable score store under OUT/scoring/: each rank appends what the model says of each image (rows: CSV;
pooled features: raw float32) to its own files as they are computed, so a killed run resumes where its files end.
A row is keyed by its image (the list's path, the file's size and mtime), never by its place in the list, so a
changed list reuses the rows of the images it still holds; `source.json` names the model the rows come from."""
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
from allspark.runs.atomic import atomic_write_text

FORMAT = 2  # 1 keyed rows by list index and the source by the list's path and the weights' mtime
FIELDS = ("image", "bytes", "mtime_ns", "uncertainty", "counts", "dim")  # OUT/scoring/rows.R.csv
Stamp = tuple[str, str]  # (size, mtime_ns) of an image file, as the store writes them


@dataclass
class Parts:
    """The files one rank appends to: rows (CSV) and features (raw float32, one row per CSV row)."""
    rows: Path
    features: Path


def parts_of(out: Path, number: int) -> Parts:
    return Parts(out / "scoring" / f"rows.{number}.csv", out / "scoring" / f"features.{number}.f32")


def _numbers(out: Path) -> list[int]:
    return sorted(int(path.name.split(".")[1]) for path in (out / "scoring").glob("rows.*.csv"))


def all_parts(out: Path) -> list[Parts]:
    """Every part under OUT/scoring/: one per rank that scored (a resumed run may have another world size), and the
    part that `keep_current` wrote."""
    return [parts_of(out, number) for number in _numbers(out)]


def stamp(path: Path) -> Stamp | None:
    """The image file's (size, mtime_ns), None when it cannot be read: a row is reused while its file is unchanged."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return str(stat.st_size), str(stat.st_mtime_ns)


def read_rows(parts: Parts) -> list[dict]:
    with open(parts.rows, newline="") as handle:
        return list(csv.DictReader(handle))


def read_part(parts: Parts) -> tuple[list[dict], np.ndarray]:
    """One part's rows and features (N, C)."""
    rows = read_rows(parts)
    dim = int(rows[0]["dim"]) if rows else 0
    return rows, np.fromfile(parts.features, dtype=np.float32, count=len(rows) * dim).reshape(len(rows), dim)


def stored_images(out: Path) -> set[str]:
    """The images with a row under OUT/scoring/ (the rows files alone: what is left to score)."""
    return {row["image"] for parts in all_parts(out) for row in read_rows(parts)}


def read_scored(out: Path) -> dict[str, tuple[dict, np.ndarray]]:
    """Every stored (row, feature vector) under OUT/scoring/, by image; the first of repeated rows (as a kill
    during `keep_current` leaves them: equal) wins."""
    scored: dict[str, tuple[dict, np.ndarray]] = {}
    for parts in all_parts(out):
        rows, features = read_part(parts)
        for row, feature in zip(rows, features):
            scored.setdefault(row["image"], (row, feature))
    return scored


def trim(parts: Parts) -> int:
    """Cut the rows file after its last whole line and the feature file to one vector per row (a kill between the
    two writes leaves vectors without rows: features are written first); returns the rows done."""
    done = []
    if parts.rows.is_file():
        text = parts.rows.read_bytes()
        if not text.endswith(b"\n"):
            with open(parts.rows, "r+b") as handle:
                handle.truncate(text.rfind(b"\n") + 1)
        done = read_rows(parts)
    if parts.features.is_file():
        with open(parts.features, "r+b") as handle:
            handle.truncate(4 * len(done) * (int(done[0]["dim"]) if done else 0))
    return len(done)


@contextmanager
def appending(out: Path, number: int) -> Iterator[Callable[[list[dict], np.ndarray], None]]:
    """append(rows, features (N, C)) onto part `number` (a rank's), trimmed first; each call writes the features,
    then the rows with their width (`dim`), each flushed, so a kill leaves rows <= features (see `trim`)."""
    parts = parts_of(out, number)
    parts.rows.parent.mkdir(parents=True, exist_ok=True)
    new_file = trim(parts) == 0
    with open(parts.rows, "a", newline="") as rows_file, open(parts.features, "ab") as feats_file:
        writer = csv.DictWriter(rows_file, FIELDS, extrasaction="ignore")
        if new_file:
            writer.writeheader()

        def append(rows: list[dict], features: np.ndarray) -> None:
            feats_file.write(np.ascontiguousarray(features, dtype=np.float32).tobytes())
            feats_file.flush()
            writer.writerows([{**row, "dim": features.shape[1]} for row in rows])
            rows_file.flush()
        yield append


def keep_current(out: Path, current: dict[str, Stamp | None]) -> tuple[int, int]:
    """Drop the stored rows of images not in `current` (image -> stamp) or changed since scored, and repeated rows:
    the rows kept are appended to a fresh part, then the old parts are removed (a kill in between leaves equal
    repeats, dropped the next time). Returns (rows kept, rows dropped for their image: gone or changed)."""
    def is_current(row: dict) -> bool:
        return current.get(row["image"]) == (row["bytes"], row["mtime_ns"])

    parts = all_parts(out)
    rows = [row for p in parts for row in read_rows(p)]
    kept = {row["image"] for row in rows if is_current(row)}
    if len(kept) == len(rows):
        return len(kept), 0
    seen: set[str] = set()
    with appending(out, _numbers(out)[-1] + 1) as append:
        for p in parts:
            part_rows, features = read_part(p)
            take = [n for n, row in enumerate(part_rows)
                    if is_current(row) and not (row["image"] in seen or seen.add(row["image"]))]
            if take:
                append([part_rows[n] for n in take], features[take])
    for p in parts:  # rows first: a features file without its rows is never read, and trimmed to nothing
        p.rows.unlink()
        p.features.unlink(missing_ok=True)
    return len(kept), sum(not is_current(row) for row in rows)


def source_key(model: str, what: str, model_config: dict, max_side: int, amp: str = "off") -> dict:
    """What decides the stored rows besides the image: the model's tensors (a digest), which model it is, its
    architecture, the side images are shrunk to and the precision of the passes."""
    return {"format": FORMAT, "model": model, "what": what, "config": model_config, "max_side": max_side, "amp": amp}


def _differences(stored: dict, key: dict) -> str:
    """The parts of two source keys that differ, in words."""
    if stored.get("format") != FORMAT:
        return "another format: written by an older allspark, or damaged"
    words = {"model": "other weights", "config": "another architecture"}
    return ", ".join(words.get(name, f"{name} {stored.get(name)!r}, now {key[name]!r}")
                     for name in key if stored.get(name) != key[name])


def _read_record(record: Path) -> dict:
    """source.json, or {} where it is not a JSON object (then it differs from every key); one written before the
    precision was recorded was scored in fp32."""
    try:
        stored = json.loads(record.read_text())
    except ValueError:
        return {}
    return {"amp": "off", **stored} if isinstance(stored, dict) else {}


def check_source(out: Path, key: dict, force: bool) -> None:
    """Start OUT/scoring/ afresh with `force`; refuse stored rows of another model; trim what a kill left."""
    scoring, record = out / "scoring", out / "scoring" / "source.json"
    if force and scoring.exists():
        shutil.rmtree(scoring)
    if record.is_file():
        stored = _read_record(record)
        if stored != json.loads(json.dumps(key)):
            raise UsageError(f"{out} holds scores of another model ({_differences(stored, key)}; {record}); pass "
                             "--force to score again or another --out")
    scoring.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps(key, indent=1) + "\n")
    for parts in all_parts(out):  # what a kill left half-written goes before any rank reads the files
        trim(parts)
