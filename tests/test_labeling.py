"""Suggestions out to Label Studio and CVAT with the model's masks, and the masks annotators drew back into the
dataset and its splits (`allspark suggest --export`, `allspark import-labels`)."""
import json
import shutil
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
import pytest
from PIL import Image

from allspark.data.io import read_mask
from allspark.labeling import cvat
from allspark.labeling.import_labels import import_labels
from inference_helpers import run_cli
from labeling_helpers import CLASSES, NAMES, PALETTE, dataset, drawn_mask, export, label_studio_export, lines

brush = pytest.importorskip("label_studio_sdk.converter.brush")
IMAGES = ["images/u0.png", "images/u1.png", "images/u2.png"]


def test_label_studio_tasks_decode_with_the_sdk_to_the_predicted_mask(tmp_path):
    export(tmp_path, ["label-studio"], IMAGES)
    tasks = json.loads((tmp_path / "label-studio" / "tasks.json").read_text())
    assert [task["data"]["allspark_image"] for task in tasks] == IMAGES  # best first
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=images/u0.png"
    for number, task in enumerate(tasks):
        prediction = task["predictions"][0]
        assert prediction["score"] == pytest.approx(1.0 - number / 10)
        layers = brush.decode_from_annotation("brush", [{**r, **r["value"]} for r in prediction["result"]])
        assert sorted(layers) == [f"brush-{name}-0" for name in sorted(NAMES)]
        for k, name in enumerate(NAMES):
            np.testing.assert_array_equal(layers[f"brush-{name}-0"] > 0, drawn_mask(number) == k)


def test_labeling_config_names_every_class_with_its_colour_and_the_ignore_label(tmp_path):
    export(tmp_path, ["label-studio"], IMAGES)
    view = ET.parse(tmp_path / "label-studio" / "labeling_config.xml").getroot()
    for tag in ("BrushLabels", "PolygonLabels"):
        labels = [(label.get("value"), label.get("background")) for label in view.find(tag)]
        assert labels == [("sky", "#4682b4"), ("road", "#804080"), ("car", "#00008e"), ("ignore", "#ffffff")]


def test_cvat_zip_holds_the_masks_in_colour_with_its_labelmap(tmp_path):
    export(tmp_path, ["cvat"], IMAGES)
    with zipfile.ZipFile(tmp_path / "cvat" / "annotations.zip") as archive:
        assert archive.read("ImageSets/Segmentation/default.txt").decode().split() == ["u0", "u1", "u2"]
        assert archive.read("labelmap.txt").decode().splitlines()[1:] == [
            "background:0,0,0::", "sky:70,130,180::", "road:128,64,128::", "car:0,0,142::", "ignore:255,255,255::"]
        lookup = cvat.colour_lookup(archive, tmp_path, CLASSES)
        for number in range(3):
            with Image.open(archive.open(f"SegmentationClass/u{number}.png")) as png:
                colours = np.asarray(png.convert("RGB"))
            expected = drawn_mask(number)
            np.testing.assert_array_equal(colours[expected == 2], np.tile(PALETTE[2], ((expected == 2).sum(), 1)))
            np.testing.assert_array_equal(colours[expected == 255], np.zeros(((expected == 255).sum(), 3)))
            np.testing.assert_array_equal(cvat.read_mask(archive, f"SegmentationClass/u{number}.png", lookup, "t"),
                                          expected)


def test_cvat_zip_loads_in_datumaro_with_the_same_masks_and_names(tmp_path):
    datumaro = pytest.importorskip("datumaro")
    export(tmp_path, ["cvat"], IMAGES)
    with zipfile.ZipFile(tmp_path / "cvat" / "annotations.zip") as archive:
        archive.extractall(tmp_path / "unzipped")
    loaded = datumaro.Dataset.import_from(str(tmp_path / "unzipped"), "voc_segmentation")
    categories = loaded.categories()[datumaro.AnnotationType.label]
    assert [item.name for item in categories] == ["background", *NAMES, "ignore"] and len(loaded) == 3
    for item in loaded:
        number = int(item.id[1:])
        expected = drawn_mask(number)
        for annotation in item.annotations:
            name = categories[annotation.label].name
            want = expected == (NAMES.index(name) if name in NAMES else 255)
            np.testing.assert_array_equal(annotation.image.astype(bool), want)
        assert {categories[a.label].name for a in item.annotations} == {*NAMES, "background"}
    loaded.export(str(tmp_path / "written"), "voc_segmentation", save_media=False)  # as CVAT writes its export
    shutil.make_archive(str(tmp_path / "datumaro"), "zip", tmp_path / "written")
    splits = dataset(tmp_path / "data")
    import_labels(tmp_path / "datumaro.zip", tmp_path / "data", splits, progress=False)
    for number in range(3):
        np.testing.assert_array_equal(read_mask(tmp_path / f"data/masks/u{number}.png"), drawn_mask(number))


@pytest.mark.parametrize("tool", ["label-studio", "cvat"])
def test_import_labels_writes_the_masks_and_moves_the_images(tmp_path, capsys, tool):
    splits = dataset(tmp_path / "data")
    export(tmp_path / "out", [tool], IMAGES[:2])
    source = (label_studio_export(tmp_path / "out/label-studio/tasks.json", tmp_path / "export.json")
              if tool == "label-studio" else tmp_path / "out/cvat/annotations.zip")
    argv = ["import-labels", str(source), "--root", str(tmp_path / "data"), "--out", str(splits), "--no-progress"]
    assert run_cli(argv) == 0
    for number in range(2):
        np.testing.assert_array_equal(read_mask(tmp_path / f"data/masks/u{number}.png"), drawn_mask(number))
    assert lines(splits / "labeled.txt") == ["images/l0.png masks/l0.png", "images/u0.png masks/u0.png",
                                             "images/u1.png masks/u1.png"]
    assert lines(splits / "unlabeled.txt") == ["images/u2.png masks/u2.png"]
    assert "2 mask(s) written, 0 already there, 2 image(s) moved" in capsys.readouterr().out
    stamps = {p: p.stat().st_mtime_ns for p in [*(tmp_path / "data/masks").iterdir(), *splits.iterdir()]}
    assert run_cli(argv) == 0  # again: nothing changes
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert "0 mask(s) written, 2 already there, 0 image(s) moved" in capsys.readouterr().out


def test_polygons_are_rasterised_and_ignore_is_255(tmp_path):
    splits = dataset(tmp_path / "data", unlabeled=1)
    region = {"type": "polygonlabels", "original_width": 24, "original_height": 16, "from_name": "polygon",
              "to_name": "image", "value": {"points": [[0, 0], [50, 0], [50, 50], [0, 50]], "polygonlabels": ["car"]}}
    ignore = {**region, "value": {"points": [[50, 50], [100, 50], [100, 100], [50, 100]], "polygonlabels": ["ignore"]}}
    task = {"id": 7, "data": {"image": "/data/local-files/?d=images/u0.png"},
            "annotations": [{"result": [region, ignore]}]}
    (tmp_path / "export.json").write_text(json.dumps([task]))
    import_labels(tmp_path / "export.json", tmp_path / "data", splits, progress=False)
    mask = read_mask(tmp_path / "data/masks/u0.png")
    assert (mask[:7, :11] == 2).all() and (mask[9:, 13:] == 255).all() and (mask[:7, 13:] == 255).all()
    assert lines(splits / "labeled.txt")[-1] == "images/u0.png masks/u0.png"


def test_class_names_are_matched_by_name_not_order(tmp_path):
    splits = dataset(tmp_path / "data", unlabeled=1)
    export(tmp_path / "out", ["cvat"], IMAGES[:1])
    shuffled = tmp_path / "shuffled.zip"
    with zipfile.ZipFile(tmp_path / "out/cvat/annotations.zip") as old, zipfile.ZipFile(shuffled, "w") as new:
        for name in old.namelist():
            data = old.read(name)
            if name == "labelmap.txt":  # the same names and colours, listed in another order
                head, *rows = data.decode().splitlines()
                data = "\n".join([head, *reversed(rows)]).encode()
            new.writestr(name, data)
    import_labels(shuffled, tmp_path / "data", splits, progress=False)
    np.testing.assert_array_equal(read_mask(tmp_path / "data/masks/u0.png"), drawn_mask(0))
