"""CVAT's "Segmentation mask 1.1" format (Pascal VOC's segmentation layout): labelmap.txt with names and colours,
SegmentationClass/NAME.png colour masks, ImageSets/Segmentation/default.txt the item names.

Written and read here with zipfile and PIL: the format is colour PNGs and two text files, and datumaro (CVAT's own
dataset library, which the tests load our zips with) would pin a user's pillow."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from allspark.errors import InputError
from allspark.labeling.classes import UNDRAWN_NAMES, ClassSet

LABELMAP, MASKS, ITEMS = "labelmap.txt", "SegmentationClass", "ImageSets/Segmentation/default.txt"
BLACK = (0, 0, 0)


def labelmap_rows(classes: ClassSet) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, colour) of each label: CVAT's background first when black is free, the classes, the ignore label."""
    labels = classes.labels()
    free = all(rgb != BLACK and name not in UNDRAWN_NAMES for name, rgb in labels)
    return [(UNDRAWN_NAMES[0], BLACK)] * free + labels


def undrawn_colour(classes: ClassSet) -> tuple[int, int, int]:
    """The colour written where the mask holds 255: the background's black, else the ignore label's."""
    rows = labelmap_rows(classes)
    return rows[0][1] if rows[0][0] in UNDRAWN_NAMES else rows[-1][1]


def colour_mask(mask: np.ndarray, classes: ClassSet) -> np.ndarray:
    """A class-index mask (H, W) as CVAT's colour mask (H, W, 3) uint8."""
    table = np.zeros((256, 3), np.uint8)
    table[:] = undrawn_colour(classes)
    table[: len(classes.names)] = classes.palette
    return table[mask]


class CvatZip:
    """The zip being written: one colour PNG per image as it comes, the labelmap and item list on closing."""

    def __init__(self, path: str, classes: ClassSet):
        self.zip, self.classes, self.names = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED), classes, []

    def add(self, name: str, mask: np.ndarray) -> None:
        buffer = io.BytesIO()
        Image.fromarray(colour_mask(mask, self.classes)).save(buffer, format="PNG")
        self.zip.writestr(f"{MASKS}/{name}.png", buffer.getvalue())
        self.names.append(name)

    def close(self) -> None:
        rows = "".join(f"{name}:{r},{g},{b}::\n" for name, (r, g, b) in labelmap_rows(self.classes))
        self.zip.writestr(LABELMAP, "# label:color_rgb:parts:actions\n" + rows)
        self.zip.writestr(ITEMS, "".join(f"{name}\n" for name in self.names))
        self.zip.close()


def open_zip(path: Path) -> zipfile.ZipFile:
    """The export's zip; a truncated or foreign file is refused naming it."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(f"{path}: not a readable CVAT export zip, truncated or not a zip ({err})") from None
    if LABELMAP not in archive.namelist():
        raise InputError(f"{path}: no {LABELMAP}; expected CVAT's 'Segmentation mask 1.1' export")
    return archive


def colour_lookup(archive: zipfile.ZipFile, path: Path, classes: ClassSet) -> dict[int, int]:
    """{r << 16 | g << 8 | b: class index} from labelmap.txt, names matched to the classes by name."""
    lookup = {}
    for number, line in enumerate(archive.read(LABELMAP).decode().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, _, rest = line.partition(":")
        try:
            r, g, b = (int(part) for part in rest.split(":")[0].split(","))
        except ValueError:
            raise InputError(f"{path}: {LABELMAP} line {number}: expected 'name:r,g,b::', found {line!r}") from None
        lookup[r << 16 | g << 8 | b] = classes.index(name, f"{path}: {LABELMAP} line {number}")
    return lookup


def item_names(archive: zipfile.ZipFile) -> list[str]:
    """The items of the export: ImageSets/Segmentation/default.txt, else every mask under SegmentationClass/."""
    if ITEMS in archive.namelist():
        return [line.strip() for line in archive.read(ITEMS).decode().splitlines() if line.strip()]
    prefix = f"{MASKS}/"
    return sorted(n[len(prefix):-4] for n in archive.namelist() if n.startswith(prefix) and n.endswith(".png"))


def read_mask(archive: zipfile.ZipFile, member: str, lookup: dict[int, int], where: str) -> np.ndarray:
    """The class-index mask (H, W) uint8 of one colour PNG; a colour the labelmap lacks is refused naming it."""
    try:
        with Image.open(io.BytesIO(archive.read(member))) as image:
            rgb = np.asarray(image.convert("RGB")).astype(np.int32)
    except (OSError, zipfile.BadZipFile, SyntaxError, ValueError) as err:
        raise InputError(f"{where}: unreadable or truncated mask ({err})") from None
    codes = rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]
    values, inverse = np.unique(codes, return_inverse=True)
    unknown = [f"{v >> 16},{v >> 8 & 255},{v & 255}" for v in values if int(v) not in lookup]
    if unknown:
        raise InputError(f"{where}: colour(s) {', '.join(unknown[:5])} not in {LABELMAP}")
    return np.array([lookup[int(v)] for v in values], np.uint8)[inverse.reshape(codes.shape)]


def mask_size(archive: zipfile.ZipFile, member: str, where: str) -> tuple[int, int]:
    """(width, height) of a mask in the zip, from its header."""
    try:
        with Image.open(io.BytesIO(archive.read(member))) as image:
            return image.size
    except (OSError, zipfile.BadZipFile, SyntaxError, ValueError) as err:
        raise InputError(f"{where}: unreadable or truncated mask ({err})") from None

