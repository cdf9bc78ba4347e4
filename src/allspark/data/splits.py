"""Labeled / unlabeled lists from a full training list: by count or fraction, seeded, disjoint."""
from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path

import numpy as np

from allspark.data.io import list_fields, list_root, read_list
from allspark.data.layouts import get_layout
from allspark.errors import InputError
from allspark.runs.atomic import atomic_write_text


def parse_fraction(text: str | float) -> Fraction:
    """`1/8`, `0.125` or 0.125 -> Fraction(1, 8); must lie in (0, 1]."""
    try:
        value = Fraction(str(text).strip()).limit_denominator(100_000)
    except (ValueError, ZeroDivisionError):
        raise InputError(f"fraction must look like 1/8 or 0.125; got {text!r}") from None
    if not 0 < value <= 1:
        raise InputError(f"fraction must be in (0, 1]; got {text!r}")
    return value


def split_lines(lines: list[str], count: int | None = None, fraction: str | float | None = None,
                seed: int = 0) -> tuple[list[str], list[str]]:
    """Choose the labeled lines (count, or ceil(fraction * n) as in the UniMatch splits) at random.

    Lines naming the same image are merged first, so no image lands in both lists; both outputs keep
    the input order.
    """
    first: dict[str, str] = {}  # image -> its first line, in input order
    for line in lines:
        first.setdefault(line.split()[0], line)
    unique = list(first.values())
    total = len(unique)
    if (count is None) == (fraction is None):
        raise InputError("give exactly one of count and fraction")
    if fraction is not None:
        count = math.ceil(parse_fraction(fraction) * total)
    if not 1 <= count <= total:
        raise InputError(f"count must be in [1, {total}] (the list's distinct images); got {count}")
    chosen = np.zeros(total, bool)
    chosen[np.random.default_rng(seed).permutation(total)[:count]] = True
    labeled = [line for line, keep in zip(unique, chosen) if keep]
    unlabeled = [line for line, keep in zip(unique, chosen) if not keep]
    return labeled, unlabeled


def make_split(train_list: str | Path, out_dir: str | Path, count: int | None = None,
               fraction: str | float | None = None, seed: int = 0, force: bool = False) -> tuple[Path, Path]:
    """Write `labeled.txt` and `unlabeled.txt` under `out_dir` from `train_list`; refuse to overwrite unless `force`."""
    entries = read_list(train_list, need_masks=True)
    lines = [f"{image} {mask}" for image, mask in entries]
    labeled, unlabeled = split_lines(lines, count, fraction, seed)
    out_dir = Path(out_dir)
    paths = out_dir / "labeled.txt", out_dir / "unlabeled.txt"
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} already exist; pass --force (force=True) to overwrite")
    for path, chosen in zip(paths, (labeled, unlabeled)):
        atomic_write_text(path, "".join(f"{line}\n" for line in chosen))
    return paths


def write_layout_list(root: str | Path, layout: str, split: str, out: str | Path) -> Path:
    """A list file of every (image, mask) pair the layout finds in `root` for `split`."""
    pairs = get_layout(layout, root).pairs(root, split)
    if not pairs:
        raise FileNotFoundError(f"{root}: layout '{layout}' found no images for split '{split}'")
    atomic_write_text(out, "".join(f"{image} {mask}\n" for image, mask in pairs))
    return Path(out)


def splits_command(root: str | Path, layout: str, out: str | Path) -> str:
    """The `allspark splits` command that writes OUT/labeled.txt and OUT/unlabeled.txt for a dataset: from the
    layout's training split (folder and synthetic layouts: ROOT/train.txt); the labeled share follows the
    presets' folder names (1_8 -> --fraction 1/8, 732 -> --count 732)."""
    name = Path(out).name
    size = (f"--fraction {name.replace('_', '/')}" if re.fullmatch(r"1_[1-9][0-9]*", name)
            else f"--count {name}" if name.isdigit() else "--fraction F")
    if layout in ("folder", "synthetic"):
        return f"allspark splits {Path(root) / 'train.txt'} --out {out} {size}"
    split = get_layout(layout).splits[0]
    return f"allspark splits {root} --layout {layout}{'' if split == 'train' else f' --split {split}'} --out {out} {size}"


def _moving(suggested: list[tuple[str, str | None]], source: str, labeled: list, unlabeled: list,
            names: tuple[str, str]) -> dict[str, str | None]:
    """{image: mask or None} of the suggested images to move, in the suggested order; refuses images in neither
    list, naming `source`."""
    is_labeled = {image for image, _ in labeled}
    waiting = {image: mask for image, mask in unlabeled}
    moving: dict[str, str | None] = {}
    unknown = []
    for image, mask in suggested:
        if image in is_labeled or image in moving:
            continue
        if image not in waiting:
            unknown.append(image)
            continue
        moving[image] = mask or waiting[image]
    if unknown:
        raise InputError(f"{source}: {len(unknown)} image(s) in neither {names[0]} nor {names[1]}: "
                         f"{', '.join(unknown[:5])}" + (", ..." if len(unknown) > 5 else ""))
    return moving


def _data_root(labeled_path: Path, entries: list) -> Path:
    """The folder the lists' paths are relative to, found from where their images are (list_root)."""
    root = list_root(labeled_path, entries)
    if root is None:
        raise InputError(f"{labeled_path}: its images (e.g. {entries[0][0]}) are found neither under "
                         f"{labeled_path.absolute().parent} nor under any folder above it; pass --root DATA_ROOT")
    return root


def add_to_labeled(suggested: str | Path, splits_dir: str | Path,
                   root: str | Path | None = None) -> tuple[int, Path, Path]:
    """`splits --add`: move the images of the list file `suggested` (see `move_to_labeled`)."""
    return move_to_labeled(read_list(suggested, need_masks=False), str(suggested), splits_dir, root)


def move_to_labeled(suggested: list[tuple[str, str | None]], source: str, splits_dir: str | Path,
                    root: str | Path | None = None) -> tuple[int, Path, Path]:
    """Move the images of `suggested` ((image, mask or None) pairs, best first, read from `source`) from
    SPLITS_DIR/unlabeled.txt to the end of SPLITS_DIR/labeled.txt, each with its mask (from the suggested line, else its unlabeled line), without losing or
    duplicating a line (comment lines kept); images already labeled are left as they are. Refuses, naming them,
    images that are in neither list or whose mask (relative to `root`; by default the folder where the lists'
    images are) is not there yet. Each list is replaced in one step."""
    splits_dir = Path(splits_dir)
    labeled_path, unlabeled_path = splits_dir / "labeled.txt", splits_dir / "unlabeled.txt"
    labeled = read_list(labeled_path, need_masks=True)
    unlabeled = read_list(unlabeled_path, need_masks=False)
    moving = _moving(suggested, source, labeled, unlabeled, (labeled_path.name, unlabeled_path.name))
    root = Path(root) if root is not None else _data_root(labeled_path, labeled + unlabeled)
    missing = [image for image, mask in moving.items() if mask is None or not (root / mask).is_file()]
    if missing:
        raise InputError(f"{len(missing)} suggested image(s) have no mask yet under {root} (label them, or give "
                         f"'image mask' lines in {source}): {', '.join(missing[:5])}"
                         + (", ..." if len(missing) > 5 else ""))
    kept = labeled_path.read_text().splitlines()  # comment lines and all, as written
    new_labeled = [*kept, *(f"{image} {mask}" for image, mask in moving.items())]
    new_unlabeled = [line for line in unlabeled_path.read_text().splitlines()
                     if not (fields := list_fields(line)) or fields[0] not in moving]
    for path, lines in ((labeled_path, new_labeled), (unlabeled_path, new_unlabeled)):
        atomic_write_text(path, "".join(f"{line}\n" for line in lines))
    return len(moving), labeled_path, unlabeled_path
