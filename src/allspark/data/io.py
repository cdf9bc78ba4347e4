"""Reading images, masks and list files with checks that name the file at fault; the ignore index and
DataError. Datasets, check-data and predict all read through here."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from allspark.errors import DataError

IGNORE_INDEX = 255
INDEX_MASK_MODES = ("L", "P", "I", "I;16")


class WrongLayoutDataError(DataError):
    """A mask made for another layout: its whole dataset is, so `data.skip_bad_samples` does not skip it."""


def _open(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        raise DataError(path, f"missing file (listed as {what})")
    try:
        image = Image.open(path)
        image.load()  # decodes fully: truncated files fail here, not later in a worker
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(path, f"unreadable or truncated {what} ({err})") from None
    return image


def rgb_array(image: Image.Image, path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 from any PIL mode: 16/32-bit grey scaled to 8 bits (by 257 when a value exceeds 255),
    palette, alpha and CMYK images converted to RGB; float images are refused (DataError)."""
    if image.mode == "F":
        raise DataError(path, "32-bit float image; save it as 8-bit RGB (or 16-bit grey) first")
    if image.mode.startswith("I"):
        grey = np.asarray(image)
        if grey.min(initial=0) < 0 or grey.max(initial=0) > 65535:
            raise DataError(path, f"grey values reach {grey.min()}..{grey.max()}; expected 0..65535 (16-bit)")
        if grey.max(initial=0) > 255:
            grey = (grey.astype(np.float32) / 257).round()
        return np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)
    return np.array(image.convert("RGB"))


def read_image(path: str | Path) -> np.ndarray:
    """An RGB image as (H, W, 3) uint8 (see `rgb_array`)."""
    return rgb_array(_open(Path(path), "image"), path)


def read_mask(path: str | Path, convert: Callable | None = None) -> np.ndarray:
    """A single-channel class-index mask as (H, W) uint8; `convert` maps another id space to train ids."""
    mask = _open(Path(path), "mask")
    if mask.mode not in INDEX_MASK_MODES:
        raise DataError(path, f"mask has mode {mask.mode} with {len(mask.getbands())} channels; expected a "
                        "single-channel class-index PNG (mode L or P: one class index per pixel, 255 = ignore), "
                        "not a colour rendering")
    array = np.array(mask)
    if array.dtype != np.uint8:
        if array.max(initial=0) > 255 or array.min(initial=0) < 0:
            raise DataError(path, f"mask values reach {array.min()}..{array.max()}; expected 0..255")
        array = array.astype(np.uint8)
    return convert(array, path) if convert is not None else array


def check_pair(image: np.ndarray, mask: np.ndarray, mask_path: str | Path, num_classes: int) -> None:
    """Raise DataError if the mask's size differs from the image's or it holds values outside [0, K) and not 255."""
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(mask_path, f"mask size {mask.shape[1]}x{mask.shape[0]} differs from its image's "
                        f"{image.shape[1]}x{image.shape[0]} (width x height)")
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        values = np.unique(mask[bad])
        shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
        raise DataError(mask_path, f"mask values {shown} outside [0, {num_classes}) and not {IGNORE_INDEX} "
                        f"({int(bad.sum())} pixels)")


def load_sample(image_path: Path, mask_path: Path | None, num_classes: int,
                convert: Callable | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Image (H, W, 3) uint8 and mask (H, W) uint8 (or None), all checks applied; raises DataError."""
    image = read_image(image_path)
    if mask_path is None:
        return image, None
    mask = read_mask(mask_path, convert)
    check_pair(image, mask, mask_path, num_classes)
    return image, mask


def list_fields(line: str) -> list[str]:
    """The fields of one list-file line; none for a blank line or a `# comment` line, which name no sample."""
    fields = line.split()
    return [] if not fields or fields[0].startswith("#") else fields


def read_list(path: str | Path, need_masks: bool) -> list[tuple[str, str | None]]:
    """A list file: `image_path mask_path` per line (the mask optional unless `need_masks`); blank lines and
    `#` comment lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "missing list file")
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = list_fields(line)
        if not fields:
            continue
        if len(fields) > 2 or (need_masks and len(fields) < 2):
            expected = "'image_path mask_path'" if need_masks else "'image_path [mask_path]'"
            raise DataError(path, f"line {number}: expected {expected}, found {len(fields)} fields: {line.strip()!r}")
        entries.append((fields[0], fields[1] if len(fields) == 2 else None))
    if not entries:
        raise DataError(path, "list file is empty")
    return entries


def list_root(list_path: str | Path, entries: list[tuple[str, str | None]]) -> Path | None:
    """The data root a list's paths are relative to: the list's own folder or the nearest folder above it under
    which one of its first images or masks exists (a preset's ROOT/splits/1_8/labeled.txt -> ROOT); None if none."""
    folder = Path(list_path).absolute().parent
    probes = [path for entry in entries[:5] for path in entry if path is not None]
    return next((candidate for candidate in (folder, *folder.parents)
                 if any((candidate / path).is_file() for path in probes)), None)
