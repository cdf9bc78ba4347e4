"""`allspark suggest --export`: the suggested images with the model's masks as pre-annotations for Label Studio
(OUT/label-studio/tasks.json and labeling_config.xml) and CVAT (OUT/cvat/annotations.zip), written as the masks
come, one image at a time, each file replaced in one step."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Sequence
from urllib.parse import quote

import numpy as np

from allspark.labeling import label_studio
from allspark.labeling.classes import ClassSet
from allspark.labeling.cvat import CvatZip
from allspark.runs.atomic import atomic_write, atomic_write_text

FORMATS = ("label-studio", "cvat")
TASKS, CONFIG, CVAT_ZIP = "label-studio/tasks.json", "label-studio/labeling_config.xml", "cvat/annotations.zip"


@dataclass
class Predicted:
    """One suggested image and the model's mask at the image's own size."""
    image: str  # its path in the list, relative to the data root
    mask: np.ndarray  # (H, W) uint8 class indices
    score: float  # the acquisition score


def cvat_names(images: Sequence[str]) -> dict[str, str]:
    """{image: its item name in the CVAT zip}: the file name without extension (what CVAT names an uploaded
    image), or the path without extension where two images share a name."""
    stems = [PurePosixPath(image).stem for image in images]
    return {image: stem if stems.count(stem) == 1 else PurePosixPath(image).with_suffix("").as_posix()
            for image, stem in zip(images, stems)}


def image_url(image: str, prefix: str) -> str:
    """How Label Studio reaches an image: `prefix` + its path (default prefix: local files, the path relative to
    LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, which is then the data root)."""
    return prefix + quote(image)


def _atomically(paths: Sequence[Path], write: Callable[[list[str]], None], tmps: tuple[str, ...] = ()) -> None:
    """write(temporary paths) once, then each temporary file renamed onto its path (atomic_write, nested)."""
    if not paths:
        write(list(tmps))
        return
    atomic_write(paths[0], lambda tmp: _atomically(paths[1:], write, (*tmps, tmp)))


def _stream(tmps: list[str], formats: Sequence[str], predicted: Iterable[Predicted], classes: ClassSet,
            names: dict[str, str], model: str, prefix: str) -> None:
    """Each prediction into every requested file as it comes: a task of tasks.json, a PNG of the zip."""
    tasks = open(tmps[0], "w") if "label-studio" in formats else None
    archive = CvatZip(tmps[-1], classes) if "cvat" in formats else None
    try:
        for number, item in enumerate(predicted):
            if tasks is not None:
                entry = label_studio.task(item.image, image_url(item.image, prefix), item.mask, item.score,
                                          classes, model)
                tasks.write(("[\n" if number == 0 else ",\n") + json.dumps(entry))
            if archive is not None:
                archive.add(names[item.image], item.mask)
        if tasks is not None:
            tasks.write("\n]\n" if tasks.tell() else "[]\n")
    finally:
        if tasks is not None:
            tasks.close()
        if archive is not None:
            archive.close()


def write_exports(out: Path, formats: Sequence[str], images: Sequence[str], predicted: Iterable[Predicted],
                  classes: ClassSet, model: str, prefix: str = label_studio.LOCAL_FILES) -> list[Path]:
    """The requested exports of the suggested `images` (best first) from their predictions; returns the files."""
    paths = [out / TASKS] * ("label-studio" in formats) + [out / CVAT_ZIP] * ("cvat" in formats)
    _atomically(paths, lambda tmps: _stream(tmps, formats, predicted, classes, cvat_names(images), model, prefix))
    if "label-studio" in formats:
        atomic_write_text(out / CONFIG, label_studio.labeling_config(classes))
        paths.append(out / CONFIG)
    return paths
