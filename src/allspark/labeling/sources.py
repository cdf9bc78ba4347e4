"""A labelling tool's export read as annotations, one at a time: a Label Studio JSON export (streamed) or a CVAT
"Segmentation mask 1.1" zip. Each names its image and the size it was drawn at and decodes its mask on demand, so
memory holds one mask whatever the export's size."""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from allspark.errors import InputError
from allspark.labeling import cvat, label_studio
from allspark.labeling.classes import ClassSet


@dataclass
class Annotation:
    """One image's annotation in an export."""
    where: str  # the export and the task or member, for messages
    image: str  # the image as the export names it (a path, or a name without extension)
    size: tuple[int, int] | None  # (width, height) it was drawn at; None when there is nothing to import
    missing: str | None  # why there is nothing to import (no annotation, skipped, nothing drawn), else None
    decode: Callable[[], np.ndarray]  # the class-index mask (H, W) uint8


def _task_annotation(task: object, number: int, path: Path, classes: ClassSet) -> Annotation:
    """The newest annotation of one task that was not skipped."""
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise InputError(f"{path}: item {number} is no task (a mapping with 'data'); expected Label Studio's JSON "
                         "export (a list of tasks)")
    image = label_studio.image_name(task["data"])
    where = f"{path} task {task.get('id', number)} ({image})"
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
    kept = [a for a in annotations if not a.get("was_cancelled")]
    results = kept[-1].get("result") or [] if kept else []
    missing = ("skipped" if annotations else "no annotation") if not kept else None
    size = label_studio.annotation_size(results, where) if not missing else None
    if not missing and size is None:
        missing = "nothing drawn"
    return Annotation(where, image, size, missing,
                      lambda: label_studio.decode_annotation(results, size, classes, where))


def label_studio_annotations(path: Path, classes: ClassSet) -> Iterator[Annotation]:
    """Every task of a Label Studio JSON export, streamed (ijson): a file that is no such export is refused."""
    import ijson  # with label-studio-sdk, the optional `label` extra, checked by the command

    count = 0
    with open(path, "rb") as handle:
        try:
            for count, task in enumerate(ijson.items(handle, "item", use_float=True), 1):
                yield _task_annotation(task, count, path, classes)
        except ijson.JSONError as err:
            raise InputError(f"{path}: not a Label Studio JSON export: not valid JSON ({err})") from None
    if count == 0:
        raise InputError(f"{path}: not a Label Studio JSON export (expected a list of tasks, found none)")


def cvat_annotations(path: Path, classes: ClassSet) -> Iterator[Annotation]:
    """Every item of a CVAT "Segmentation mask 1.1" zip; an item without its mask is missing."""
    with cvat.open_zip(path) as archive:
        lookup = cvat.colour_lookup(archive, path, classes)
        members = set(archive.namelist())
        for name in cvat.item_names(archive):
            member = f"{cvat.MASKS}/{name}.png"
            where = f"{path}: {member}"
            if member not in members:
                yield Annotation(where, name, None, "no mask", lambda: None)
                continue
            size = cvat.mask_size(archive, member, where)
            yield Annotation(where, name, size, None,
                             lambda member=member, where=where: cvat.read_mask(archive, member, lookup, where))


def annotations(path: str | Path, classes: ClassSet) -> Iterator[Annotation]:
    """The annotations of an export: a zip is read as CVAT's, anything else as Label Studio's JSON."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: export not found (a Label Studio JSON export or a CVAT zip)")
    reader = cvat_annotations if zipfile.is_zipfile(path) or path.suffix.lower() == ".zip" else \
        label_studio_annotations
    return reader(path, classes)
