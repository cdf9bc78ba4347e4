"""`allspark import-labels`: the masks annotators drew in Label Studio or CVAT written where the dataset keeps them,
checked by check-data's rules, and their images moved from unlabeled.txt to labeled.txt as `splits --add` does.

Two passes over the export: the first decodes and checks every annotation (image known, size, class names, an
existing mask left alone unless it is the same or --force) and writes nothing, so a bad export loses nothing; the
second writes the masks that differ. Running it again writes and moves nothing."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from allspark.data.checks import sample_problems
from allspark.data.io import IGNORE_INDEX, read_list, read_mask
from allspark.data.layouts import get_layout
from allspark.data.splits import move_to_labeled
from allspark.errors import DataError, InputError, OutputExistsError
from allspark.labeling.classes import ClassSet
from allspark.labeling.sources import Annotation, annotations
from allspark.progress import progress_bar
from allspark.runs.atomic import atomic_write

UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")  # Label Studio's prefix on an uploaded file's name


@dataclass
class Imported:
    """What `import_labels` did."""
    written: list[Path] = field(default_factory=list)  # masks written (new or replaced)
    unchanged: int = 0  # masks already there with the same pixels
    moved: int = 0  # images moved from unlabeled.txt to labeled.txt
    left: list[tuple[str, str]] = field(default_factory=list)  # (image, why) of the images left unlabeled


@dataclass
class _Lists:
    """The splits' images and where each one's mask goes."""
    masks: dict[str, str | None]  # image -> its mask path (relative to the root), None when not known
    labeled: set[str]
    by_name: dict[str, list[str]]  # every name an export may give an image -> the images it may be

    def image(self, annotation: Annotation) -> str:
        """The listed image an annotation is of; refuses one in neither list, or a name that fits several."""
        name = annotation.image.lstrip("/")
        found = self.by_name.get(name) or self.by_name.get(UPLOAD_PREFIX.sub("", PurePosixPath(name).name), [])
        if len(found) != 1:
            what = "fits several listed images: " + ", ".join(found[:3]) if found else \
                "is in neither labeled.txt nor unlabeled.txt"
            raise InputError(f"{annotation.where}: image {annotation.image!r} {what}")
        return found[0]


def _names(image: str) -> list[str]:
    """The names an export may give a listed image: its path, with or without its extension, and its file name."""
    path = PurePosixPath(image)
    return list(dict.fromkeys([image, path.with_suffix("").as_posix(), path.name, path.stem]))


def _lists(root: Path, splits_dir: Path, layout_name: str) -> _Lists:
    """The lists read; an image's mask path is its list line's, else the one its layout gives it."""
    labeled = read_list(splits_dir / "labeled.txt", need_masks=True)
    unlabeled = read_list(splits_dir / "unlabeled.txt", need_masks=False)
    masks = {image: mask for image, mask in [*unlabeled, *labeled]}
    if any(mask is None for mask in masks.values()):
        layout = get_layout(layout_name, root)
        found = {image: mask for split in layout.splits for image, mask in layout.pairs(root, split)}
        masks = {image: mask or found.get(image) for image, mask in masks.items()}
    by_name: dict[str, list[str]] = {}
    for image in masks:
        for name in _names(image):
            by_name.setdefault(name, []).append(image)
    return _Lists(masks, {image for image, _ in labeled}, by_name)


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except OSError as err:
        raise DataError(path, f"unreadable image ({err})") from None


def _check(annotation: Annotation, image: str, mask_rel: str | None, root: Path, force: bool) -> bool | None:
    """Whether the annotation's mask must be written (None: nothing but 255 in it, as CVAT exports an image nobody
    drew on); refuses a size that differs from the image's, or a mask file already there with other pixels (unless
    `force`)."""
    if mask_rel is None:
        raise InputError(f"{annotation.where}: no mask path known for {image}; give it as the second field of its "
                         "unlabeled.txt line")
    width, height = _image_size(root / image)
    if annotation.size != (width, height):
        raise DataError(annotation.where, f"mask size {annotation.size[0]}x{annotation.size[1]} differs from its "
                        f"image {image}'s {width}x{height} (width x height)")
    mask = annotation.decode()
    if mask.shape != (height, width):
        raise DataError(annotation.where, f"mask decodes to {mask.shape[1]}x{mask.shape[0]}, its image {image} is "
                        f"{width}x{height}")
    if (mask == IGNORE_INDEX).all():
        return None
    target = root / mask_rel
    if not target.is_file():
        return True
    if np.array_equal(read_mask(target), mask):
        return False
    if not force:
        raise OutputExistsError(f"{target}: a mask is already there with other pixels than {annotation.where}'s; "
                                "pass --force to replace it")
    return True


def _plan(export: Path, classes: ClassSet, root: Path, lists: _Lists, force: bool, progress: bool, done: Imported
          ) -> dict[str, tuple[str, bool]]:
    """Pass one: {image: (mask path, to write)} of every annotation, checked; nothing written."""
    plan: dict[str, tuple[str, bool]] = {}
    where_of: dict[str, str] = {}
    for annotation in progress_bar(annotations(export, classes), desc="import-labels: check", unit="img",
                                   enabled=progress):
        image = lists.image(annotation)
        if image in where_of:
            raise InputError(f"{annotation.where}: {image} is annotated twice (also {where_of[image]})")
        where_of[image] = annotation.where
        if annotation.missing:
            if image not in lists.labeled:
                done.left.append((image, annotation.missing))
            continue
        write = _check(annotation, image, lists.masks[image], root, force)
        if write is None:
            if image not in lists.labeled:
                done.left.append((image, "nothing drawn"))
            continue
        plan[image] = (lists.masks[image], write)
    return plan


def _write(export: Path, classes: ClassSet, root: Path, lists: _Lists, plan: dict, progress: bool,
           done: Imported) -> None:
    """Pass two: the masks that differ from what is on disk, each written in one step."""
    todo = {image for image, (_, write) in plan.items() if write}
    if not todo:
        return
    bar = progress_bar(total=len(todo), desc="import-labels: write", unit="img", enabled=progress)
    with bar:
        for annotation in annotations(export, classes):
            image = lists.image(annotation)
            if image in todo:
                target = root / plan[image][0]
                mask = annotation.decode()
                atomic_write(target, lambda tmp: Image.fromarray(mask).save(tmp, format="PNG"))
                done.written.append(target)
                bar.update(1)


def import_labels(export: str | Path, root: str | Path, splits_dir: str | Path, layout: str = "folder",
                  force: bool = False, progress: bool = True) -> Imported:
    """Write the export's masks under `root` where the lists (else `layout`) keep them, check each with
    check-data's rules, and move their images from SPLITS_DIR/unlabeled.txt to SPLITS_DIR/labeled.txt."""
    export, root, splits_dir = Path(export), Path(root), Path(splits_dir)
    target = get_layout(layout, root)
    classes = ClassSet.of(target.class_names, target.palette)
    lists = _lists(root, splits_dir, layout)
    done = Imported()
    plan = _plan(export, classes, root, lists, force, progress, done)
    done.unchanged = sum(1 for _, write in plan.values() if not write)
    _write(export, classes, root, lists, plan, progress, done)
    problems = [line for image, (mask, _) in plan.items()
                for line in sample_problems(root / image, root / mask, len(classes.names))]
    if problems:
        raise DataError(problems[0].split(": ", 1)[0], problems[0].split(": ", 1)[-1])
    moving = [(image, mask) for image, (mask, _) in plan.items() if image not in lists.labeled]
    if moving:
        done.moved = move_to_labeled(moving, str(export), splits_dir, root)[0]
    return done
