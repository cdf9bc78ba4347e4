"""The fixtures of the labelling-tool tests: a small folder dataset with splits, masks made to be drawn, and the
exports the tools would give back for them."""
import json
from pathlib import Path

import numpy as np
from PIL import Image

from allspark.labeling.classes import ClassSet
from allspark.labeling.export import Predicted, write_exports

NAMES = ("sky", "road", "car")
PALETTE = np.array([(70, 130, 180), (128, 64, 128), (0, 0, 142)], np.uint8)
CLASSES = ClassSet.of(NAMES, PALETTE)
SIZE = (24, 16)  # width, height of every image


def drawn_mask(seed: int) -> np.ndarray:
    """A (16, 24) mask with all three classes in blocks and some pixels left undrawn (255)."""
    mask = np.zeros(SIZE[::-1], np.uint8)
    mask[5:, :] = 1
    mask[8 + seed % 4:14, 3 + seed:12 + seed] = 2
    mask[0:2, 20:] = 255
    return mask


def dataset(root: Path, unlabeled: int = 3) -> Path:
    """ROOT with classes.txt, images/u{i}.png (and l0.png, labeled, with its mask) and ROOT/splits; returns the
    splits folder. The unlabeled lines name where their masks go."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("".join(f"{n} {r} {g} {b}\n" for n, (r, g, b) in zip(NAMES, PALETTE)))
    for name in ["l0", *(f"u{i}" for i in range(unlabeled))]:
        Image.fromarray(np.full((*SIZE[::-1], 3), 90, np.uint8)).save(root / "images" / f"{name}.png")
    Image.fromarray(drawn_mask(0)).save(root / "masks" / "l0.png")
    splits = root / "splits"
    splits.mkdir()
    (splits / "labeled.txt").write_text("images/l0.png masks/l0.png\n")
    (splits / "unlabeled.txt").write_text("".join(f"images/u{i}.png masks/u{i}.png\n" for i in range(unlabeled)))
    return splits


def export(out: Path, formats, images) -> list[Path]:
    """Our exports of `images` with drawn_mask(i) as the prediction of the i-th."""
    predicted = [Predicted(image, drawn_mask(i), 1.0 - i / 10) for i, image in enumerate(images)]
    return write_exports(out, formats, images, iter(predicted), CLASSES, "test model")


def label_studio_export(tasks_json: Path, path: Path, edit=None) -> Path:
    """A Label Studio JSON export as the server writes it, each task's prediction copied into its annotation
    (`edit(task)` may change one)."""
    tasks = json.loads(tasks_json.read_text())
    for number, task in enumerate(tasks, 1):
        task["id"] = number
        task["annotations"] = [{"id": number, "result": task["predictions"][0]["result"], "was_cancelled": False}]
        if edit is not None:
            edit(task)
    path.write_text(json.dumps(tasks))
    return path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()
