"""The bad exports `allspark import-labels` meets (issue 31), for benchmarks/studies/bad_inputs.py: a small folder
dataset with splits, our own exports of it, and each export spoilt one way. Returns (name, argv, expect) rows."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from allspark.labeling.classes import ClassSet
from allspark.labeling.export import CVAT_ZIP, TASKS, Predicted, write_exports

NAMES = ("sky", "road", "car")
PALETTE = np.array([(70, 130, 180), (128, 64, 128), (0, 0, 142)], np.uint8)


def _dataset(root: Path) -> list[Predicted]:
    """ROOT/images/u{0,1}.png (32x24) in unlabeled.txt, l0 labeled; masks standing for the predictions."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("".join(f"{n} {r} {g} {b}\n" for n, (r, g, b) in zip(NAMES, PALETTE)))
    mask = np.zeros((24, 32), np.uint8)
    mask[8:] = 1
    mask[12:20, 4:14] = 2
    for name in ("l0", "u0", "u1"):
        Image.fromarray(np.full((24, 32, 3), 100, np.uint8)).save(root / f"images/{name}.png")
    Image.fromarray(mask).save(root / "masks/l0.png")
    (root / "splits").mkdir()
    (root / "splits/labeled.txt").write_text("images/l0.png masks/l0.png\n")
    (root / "splits/unlabeled.txt").write_text("images/u0.png masks/u0.png\nimages/u1.png masks/u1.png\n")
    return [Predicted(f"images/u{i}.png", mask, 0.5) for i in range(2)]


def _spoilt(tasks: list[dict], folder: Path, name: str, spoil) -> Path:
    """A Label Studio export of `tasks` (the predictions as annotations) with `spoil(task)` applied to the second."""
    tasks = json.loads(json.dumps(tasks))
    for number, task in enumerate(tasks, 1):
        task["id"] = number
        task["annotations"] = [{"id": number, "result": task["predictions"][0]["result"]}]
    spoil(tasks[1])
    path = folder / f"{name}.json"
    path.write_text(json.dumps(tasks))
    return path


def _relabel(task, label="lorry"):
    task["annotations"][0]["result"][0]["value"]["brushlabels"] = [label]


def label_cases(tmp: Path) -> list[tuple[str, list[str], str]]:
    root, out, folder = tmp / "label_data", tmp / "label_suggest", tmp / "label_exports"
    predicted = _dataset(root)
    write_exports(out, ["label-studio", "cvat"], [p.image for p in predicted], iter(predicted),
                  ClassSet.of(NAMES, PALETTE), "bad inputs")
    folder.mkdir()
    tasks = json.loads((out / TASKS).read_text())
    spoils = {
        "unknown class": _relabel,
        "image not in the lists": lambda t: t["data"].update(allspark_image="images/elsewhere.png"),
        "mask of the wrong size": lambda t: [r.update(original_width=40) for r in t["annotations"][0]["result"]],
        "task without annotation": lambda t: t.update(annotations=[]),
        "skipped task": lambda t: t["annotations"][0].update(was_cancelled=True),
    }
    exports = {name: _spoilt(tasks, folder, name.replace(" ", "_"), spoil) for name, spoil in spoils.items()}
    data = (out / CVAT_ZIP).read_bytes()
    (folder / "cut.zip").write_bytes(data[: len(data) // 2])
    (folder / "project.json").write_text(json.dumps({"title": "a project, not an export"}))
    exports |= {"truncated CVAT zip": folder / "cut.zip", "a JSON that is not an export": folder / "project.json"}
    expect = {"task without annotation": "ok", "skipped task": "ok"}
    return [(f"import-labels: {name}", ["import-labels", str(path), "--root", str(root), "--out",
                                        str(root / "splits"), "--no-progress"], expect.get(name, "fail"))
            for name, path in exports.items()]
