"""Label Studio's side: the BrushLabels labeling config, a task with the model's mask as its pre-annotation (brush
RLE through label-studio-sdk's converter), and the class-index mask of an exported annotation (brush and polygon
regions)."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import parse_qs, urlparse

import numpy as np
from PIL import Image, ImageDraw

from allspark.data.io import IGNORE_INDEX
from allspark.errors import InputError
from allspark.labeling.classes import ClassSet

IMAGE_TAG, BRUSH_TAG, POLYGON_TAG = "image", "brush", "polygon"  # the config's tag names, the regions' from/to names
LOCAL_FILES = "/data/local-files/?d="  # how Label Studio serves a file under LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT
IMAGE_KEY = "allspark_image"  # the image's path in the dataset, kept in each task's data


def labeling_config(classes: ClassSet) -> str:
    """The labeling config: the image, brush labels and polygon labels, one label per class (with its colour) and
    the ignore label."""
    view = ET.Element("View")
    ET.SubElement(view, "Image", name=IMAGE_TAG, value=f"${IMAGE_TAG}", zoom="true")
    for kind, name in (("BrushLabels", BRUSH_TAG), ("PolygonLabels", POLYGON_TAG)):
        tag = ET.SubElement(view, kind, name=name, toName=IMAGE_TAG)
        for label, (r, g, b) in classes.labels():
            ET.SubElement(tag, "Label", value=label, background=f"#{r:02x}{g:02x}{b:02x}")
    ET.indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"


def brush_regions(mask: np.ndarray, classes: ClassSet) -> list[dict]:
    """One brush region per class present in the class-index mask (H, W), in Label Studio's RLE."""
    from label_studio_sdk.converter.brush import mask2rle  # the optional `label` extra, checked by the command

    height, width = mask.shape
    return [{"id": f"c{k}", "from_name": BRUSH_TAG, "to_name": IMAGE_TAG, "type": "brushlabels",
             "original_width": width, "original_height": height, "image_rotation": 0,
             "value": {"format": "rle", "rle": mask2rle((mask == k).astype(np.uint8) * 255),
                       "brushlabels": [classes.names[k]]}}
            for k in np.unique(mask) if k != IGNORE_INDEX]


def task(image: str, url: str, mask: np.ndarray, score: float, classes: ClassSet, model: str) -> dict:
    """One task: the image (its URL, and its path in the dataset) with the predicted mask as a pre-annotation
    scored by the acquisition score, so annotators correct instead of drawing and can sort by it."""
    return {"data": {IMAGE_TAG: url, IMAGE_KEY: image},
            "predictions": [{"model_version": model, "score": score, "result": brush_regions(mask, classes)}]}


def image_name(task_data: dict) -> str:
    """The image a task names: our own key, else the path of its URL (local files' `d=`, else the URL's path)."""
    if IMAGE_KEY in task_data:
        return str(task_data[IMAGE_KEY])
    url = urlparse(str(task_data.get(IMAGE_TAG, "")))
    return parse_qs(url.query).get("d", [url.path])[0]


def _brush(region: dict, size: tuple[int, int]) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle  # the optional `label` extra, checked by the command

    width, height = size
    values = decode_rle(region["value"]["rle"])
    if values.size != width * height * 4:
        raise ValueError(f"its RLE holds {values.size // 4} pixels, not {width}x{height}")
    return values.reshape(height, width, 4)[:, :, 3] > 127  # the alpha channel


def _polygon(region: dict, size: tuple[int, int]) -> np.ndarray:
    """A polygon region (points in percent of the image) rasterised at the image's size."""
    width, height = size
    canvas = Image.new("L", size, 0)
    ImageDraw.Draw(canvas).polygon([(x * width / 100, y * height / 100) for x, y in region["value"]["points"]],
                                   fill=1)
    return np.asarray(canvas, bool)


def annotation_size(results: list[dict], where: str) -> tuple[int, int] | None:
    """(width, height) the regions were drawn on; None without regions; regions of two sizes are refused."""
    sizes = {(int(r["original_width"]), int(r["original_height"])) for r in results if "original_width" in r}
    if len(sizes) > 1:
        raise InputError(f"{where}: regions drawn on images of different sizes {sorted(sizes)}")
    return sizes.pop() if sizes else None


def decode_annotation(results: list[dict], size: tuple[int, int], classes: ClassSet, where: str) -> np.ndarray:
    """The class-index mask (H, W) uint8 of one annotation's regions, later regions over earlier ones, 255 where
    nothing was drawn; a label that is no class is refused naming `where`."""
    mask = np.full(size[::-1], IGNORE_INDEX, np.uint8)
    for region in results:
        kind = str(region.get("type", "")).lower()
        if kind not in ("brushlabels", "polygonlabels"):
            continue
        try:
            names = region["value"].get(kind, [])
            drawn = _brush(region, size) if kind == "brushlabels" else _polygon(region, size)
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise InputError(f"{where}: a {kind} region Label Studio would not write ({type(err).__name__}: {err})"
                             ) from None
        if len(names) != 1:
            raise InputError(f"{where}: a {kind} region has {len(names)} labels; expected one")
        mask[drawn] = classes.index(names[0], where)
    return mask
