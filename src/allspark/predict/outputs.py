"""The files `allspark predict` writes: inputs expanded from files, folders and globs, a mask, colour and overlay
PNG per image, and the legend."""
from __future__ import annotations

import glob
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from allspark.data.colors import colorize, legend_entries, legend_image, overlay
from allspark.data.io import read_image
from allspark.data.layouts import IMAGE_EXTS
from allspark.predict.predictor import Predictor
from allspark.progress import progress_bar

LEGEND_FILES = ("legend.png", "legend.json")


def expand_inputs(inputs: Iterable[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (their image files, not recursive) and glob patterns -> (files, problems)."""
    files, problems = [], []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
            if not found:
                problems.append(f"{text}: folder has no image files ({', '.join(IMAGE_EXTS)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
            if not found:
                problems.append(f"{text}: pattern matches no files")
            files.extend(found)
        else:
            problems.append(f"{text}: no such file or folder")
    return files, problems


def output_paths(out: Path, source: Path) -> dict[str, Path]:
    return {kind: out / f"{source.stem}{suffix}.png" for kind, suffix in (("mask", ""), ("color", "_color"),
                                                                           ("overlay", "_overlay"))}


@dataclass
class _Item:
    path: Path
    image: np.ndarray


def _batches(items: Iterator[_Item], batch_size: int) -> Iterator[list[_Item]]:
    """Consecutive images of equal size, at most batch_size at a time."""
    batch: list[_Item] = []
    for item in items:
        if batch and (len(batch) == batch_size or item.image.shape != batch[0].image.shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def write_outputs(predictor: Predictor, item: _Item, mask: np.ndarray, out: Path, alpha: float) -> None:
    paths = output_paths(out, item.path)
    # uint8 masks give mode "L" PNGs; more than 256 classes give 32-bit mode "I"
    Image.fromarray(mask if mask.dtype == np.uint8 else mask.astype(np.int32)).save(paths["mask"])
    color = colorize(mask, predictor.palette)
    Image.fromarray(color).save(paths["color"])
    Image.fromarray(overlay(item.image, color, alpha)).save(paths["overlay"])


def run_predict(predictor: Predictor, files: Sequence[Path], out: Path, batch_size: int = 1,
                alpha: float = 0.5) -> tuple[int, list[str]]:
    """Segment `files` into `out`; returns (images written, problems: one line per skipped file)."""
    out.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    progress = progress_bar(total=len(files), desc="predict", unit="img")

    def readable() -> Iterator[_Item]:
        for path in files:
            try:
                image = read_image(path)
                predictor.pixels(image)
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                problems.append(f"{path}: skipped, {getattr(err, 'problem', err)}")
                progress.update(1)
                continue
            if predictor.tiling(*image.shape[:2]):
                progress.write(f"allspark predict: {path}: {predictor.tiling_note(*image.shape[:2])}", file=sys.stderr)
            yield _Item(path, image)

    written = 0
    with progress:  # closed on Ctrl-C too, so the stop's line starts a line of its own
        for batch in _batches(readable(), batch_size):
            masks = predictor.predict_masks([item.image for item in batch])
            for item, mask in zip(batch, masks):
                write_outputs(predictor, item, mask, out, alpha)
                written += 1
            progress.update(len(batch))
    return written, problems


def write_legend(out: Path, palette: np.ndarray, names: Sequence[str]) -> None:
    """LEGEND_FILES in `out`: a swatch per class with its index and name, and the same as JSON."""
    png, sidecar = (out / name for name in LEGEND_FILES)
    legend_image(palette, names).save(png)
    sidecar.write_text(json.dumps(legend_entries(palette, names), indent=1) + "\n")
