"""Bad exports given to `allspark import-labels`: each one line naming what is at fault, and nothing lost (no mask
written, both lists as they were); an image without annotation is named and left unlabeled; `suggest --export`
through the CLI, and the one-line error of the missing extra."""
import json
import sys

import numpy as np
import pytest
from PIL import Image

from allspark.data.io import read_mask
from inference_helpers import run_cli, tiny_checkpoint, write_images
from allspark.labeling.export import Predicted, write_exports
from labeling_helpers import CLASSES, dataset, drawn_mask, export, label_studio_export, lines

pytest.importorskip("label_studio_sdk")
IMAGES = ["images/u0.png", "images/u1.png"]


def _unknown_class(task):
    task["annotations"][0]["result"][0]["value"]["brushlabels"] = ["lorry"]


def _stranger(task):
    task["data"] = {"image": "/data/local-files/?d=images/elsewhere.png"}


def _wrong_size(task):
    for region in task["annotations"][0]["result"]:
        region["original_width"] = 30


def _bad_export(tmp_path, case):
    """(the export, the text its one line must hold)."""
    tasks = tmp_path / "out/label-studio/tasks.json"
    if case == "unknown class":
        return label_studio_export(tasks, tmp_path / "e.json", lambda t: t["id"] == 2 and _unknown_class(t)), "'lorry'"
    if case == "image not in the lists":
        return label_studio_export(tasks, tmp_path / "e.json", lambda t: t["id"] == 2 and _stranger(t)), "elsewhere.png"
    if case == "mask of the wrong size":
        return label_studio_export(tasks, tmp_path / "e.json", lambda t: t["id"] == 2 and _wrong_size(t)), "30x16"
    if case == "truncated zip":
        data = (tmp_path / "out/cvat/annotations.zip").read_bytes()
        (tmp_path / "cut.zip").write_bytes(data[: len(data) // 2])
        return tmp_path / "cut.zip", "cut.zip"
    (tmp_path / "e.json").write_text(json.dumps({"tasks": "a project file, not an export"}))
    return tmp_path / "e.json", "not a Label Studio JSON export"


@pytest.mark.parametrize("case", ["unknown class", "image not in the lists", "mask of the wrong size",
                                  "truncated zip", "a JSON that is not an export"])
def test_a_bad_export_gives_one_line_and_loses_nothing(tmp_path, capsys, case):
    splits = dataset(tmp_path / "data")
    export(tmp_path / "out", ["label-studio", "cvat"], IMAGES)
    source, named = _bad_export(tmp_path, case)
    before = {name: (splits / name).read_text() for name in ("labeled.txt", "unlabeled.txt")}
    code = run_cli(["import-labels", str(source), "--root", str(tmp_path / "data"), "--out", str(splits),
                    "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("allspark import-labels: error:") and named in err[0]
    assert sorted(p.name for p in (tmp_path / "data/masks").iterdir()) == ["l0.png"]
    assert {name: (splits / name).read_text() for name in before} == before


def test_a_task_without_annotation_or_skipped_is_named_and_left_unlabeled(tmp_path, capsys):
    splits = dataset(tmp_path / "data")
    export(tmp_path / "out", ["label-studio"], [*IMAGES, "images/u2.png"])

    def edit(task):
        if task["id"] == 1:
            task["annotations"] = []
        elif task["id"] == 3:
            task["annotations"][0]["was_cancelled"] = True

    source = label_studio_export(tmp_path / "out/label-studio/tasks.json", tmp_path / "e.json", edit)
    assert run_cli(["import-labels", str(source), "--root", str(tmp_path / "data"), "--out", str(splits),
                    "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "left unlabeled (no annotation): images/u0.png" in out and "left unlabeled (skipped): images/u2.png" in out
    assert lines(splits / "unlabeled.txt") == ["images/u0.png masks/u0.png", "images/u2.png masks/u2.png"]
    assert lines(splits / "labeled.txt")[1:] == ["images/u1.png masks/u1.png"]
    np.testing.assert_array_equal(read_mask(tmp_path / "data/masks/u1.png"), drawn_mask(1))


def test_an_image_nobody_drew_on_in_cvat_is_named_and_left_unlabeled(tmp_path, capsys):
    splits = dataset(tmp_path / "data")
    predicted = [Predicted(image, drawn_mask(i) if i else np.full((16, 24), 255, np.uint8), 0.5)
                 for i, image in enumerate(IMAGES)]
    write_exports(tmp_path / "out", ["cvat"], IMAGES, iter(predicted), CLASSES, "test")
    assert run_cli(["import-labels", str(tmp_path / "out/cvat/annotations.zip"), "--root", str(tmp_path / "data"),
                    "--out", str(splits), "--no-progress"]) == 0
    assert "left unlabeled (nothing drawn): images/u0.png" in capsys.readouterr().out
    assert lines(splits / "unlabeled.txt") == ["images/u0.png masks/u0.png", "images/u2.png masks/u2.png"]
    assert not (tmp_path / "data/masks/u0.png").exists()


def test_an_existing_mask_with_other_pixels_is_kept_unless_force(tmp_path, capsys):
    splits = dataset(tmp_path / "data", unlabeled=1)
    export(tmp_path / "out", ["cvat"], IMAGES[:1])
    Image.fromarray(drawn_mask(3)).save(tmp_path / "data/masks/u0.png")  # drawn before, not as exported
    argv = ["import-labels", str(tmp_path / "out/cvat/annotations.zip"), "--root", str(tmp_path / "data"),
            "--out", str(splits), "--no-progress"]
    assert run_cli(argv) != 0 and "--force" in capsys.readouterr().err
    np.testing.assert_array_equal(read_mask(tmp_path / "data/masks/u0.png"), drawn_mask(3))
    assert lines(splits / "unlabeled.txt") == ["images/u0.png masks/u0.png"]
    assert run_cli([*argv, "--force"]) == 0
    np.testing.assert_array_equal(read_mask(tmp_path / "data/masks/u0.png"), drawn_mask(0))


def test_suggest_exports_both_tools_through_the_cli(tmp_path, capsys):
    weights = tiny_checkpoint(tmp_path / "run")
    images = write_images(tmp_path / "data" / "images", [(64, 80)] * 3 + [(72, 96)])
    pool = tmp_path / "pool.txt"
    pool.write_text("".join(f"images/{p.name}\n" for p in images))
    assert run_cli(["suggest", "--checkpoint", str(weights), "--count", "2", "--list", str(pool), "--root",
                    str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--threads", "1", "--device", "cpu",
                    "--max-side", "64", "--export", "label-studio", "--export", "cvat", "--image-url", "http://h/"]) == 0
    suggested = [line.split()[0] for line in lines(tmp_path / "out/suggested.txt")]
    tasks = json.loads((tmp_path / "out/label-studio/tasks.json").read_text())
    assert [task["data"]["allspark_image"] for task in tasks] == suggested
    assert tasks[0]["data"]["image"] == f"http://h/{suggested[0]}"
    for task, image in zip(tasks, suggested):  # the masks at the image's own size, not the scored --max-side
        sizes = {(r["original_width"], r["original_height"]) for r in task["predictions"][0]["result"]}
        assert sizes == {(96, 72) if image == f"images/{images[3].name}" else (80, 64)}
    assert (tmp_path / "out/label-studio/labeling_config.xml").is_file()
    assert (tmp_path / "out/cvat/annotations.zip").is_file()
    assert "allspark import-labels EXPORT" in capsys.readouterr().out


def test_a_missing_label_extra_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "label_studio_sdk", None)
    code = run_cli(["suggest", "--checkpoint", str(tmp_path / "nowhere"), "--count", "1", "--out",
                    str(tmp_path / "out"), "--export", "label-studio", "--threads", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "pip install 'allspark-seg[label]'" in err[0]
    assert not (tmp_path / "out").exists()
