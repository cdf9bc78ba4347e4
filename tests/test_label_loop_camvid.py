"""One round of the labelling loop on camvid-mini from the command line, as a user runs it: train a small run,
`suggest --count 5 --export label-studio --export cvat`, a Label Studio export whose annotations are the
pre-annotations, `import-labels`: five masks equal to the predictions, the lists moved by five, none lost."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from allspark.data.io import read_list, read_mask
from labeling_helpers import label_studio_export

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid-mini"
brush = pytest.importorskip("label_studio_sdk.converter.brush")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not CAMVID.is_dir(), reason="needs ../shared/data/camvid-mini")]


def allspark(*argv: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "allspark", *argv], capture_output=True, text=True, timeout=900,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def user_copy(root: Path) -> Path:
    """camvid-mini as a user's dataset: the images, and masks only for the 20 labeled images (the shared set is
    read-only and fully labelled); returns the splits folder."""
    shutil.copytree(CAMVID / "images", root / "images")
    for name in ("classes.txt", "train.txt"):
        shutil.copy(CAMVID / name, root / name)
    (root / "val.txt").write_text("".join(CAMVID.joinpath("val.txt").read_text().splitlines(True)[:4]))
    allspark("splits", str(root / "train.txt"), "--out", str(root / "splits"), "--count", "20", "--seed", "0")
    for _, mask in [*read_list(root / "splits/labeled.txt", True), *read_list(root / "val.txt", True)]:
        (root / mask).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(CAMVID / mask, root / mask)
    return root / "splits"


def test_one_round_of_the_loop_on_camvid_mini(tmp_path):
    root, run, out = tmp_path / "camvid", tmp_path / "run", tmp_path / "suggest"
    splits = user_copy(root)
    before = {name: read_list(splits / f"{name}.txt", False) for name in ("labeled", "unlabeled")}
    allspark("train", "camvid/sup", f"data.root={root}", f"run_dir={run}", "model.pretrained=null",
             "data.labeled_list=splits/labeled.txt", "data.unlabeled_list=splits/unlabeled.txt", "train.epochs=1",
             "train.max_iters=4", "data.workers=0", "--threads", "1", "--no-progress")
    allspark("suggest", "--checkpoint", str(run), "--which", "latest", "--count", "5", "--out", str(out),
             "--export", "label-studio", "--export", "cvat", "--threads", "1", "--device", "cpu")
    assert (out / "label-studio/labeling_config.xml").is_file() and (out / "cvat/annotations.zip").is_file()
    tasks = json.loads((out / "label-studio/tasks.json").read_text())
    assert len(tasks) == 5
    source = label_studio_export(out / "label-studio/tasks.json", tmp_path / "export.json")
    allspark("import-labels", str(source), "--root", str(root), "--out", str(splits), "--no-progress")
    waiting = dict(before["unlabeled"])
    names = [line.split()[-1] for line in (root / "classes.txt").read_text().splitlines()]
    for task in tasks:
        image = task["data"]["allspark_image"]
        mask = read_mask(root / waiting[image])
        regions = task["predictions"][0]["result"]
        assert mask.shape == (regions[0]["original_height"], regions[0]["original_width"])
        expected = np.full(mask.shape, 255, np.uint8)
        for region in regions:
            layer = brush.decode_from_annotation("brush", [{**region, **region["value"]}]).popitem()[1]
            expected[layer > 0] = names.index(region["value"]["brushlabels"][0])
        np.testing.assert_array_equal(mask, expected)
    after = {name: read_list(splits / f"{name}.txt", False) for name in ("labeled", "unlabeled")}
    assert len(after["labeled"]) == len(before["labeled"]) + 5
    assert len(after["unlabeled"]) == len(before["unlabeled"]) - 5
    assert sorted(after["labeled"] + after["unlabeled"]) == sorted(before["labeled"] + before["unlabeled"])
    assert {image for image, _ in after["labeled"][-5:]} == {task["data"]["allspark_image"] for task in tasks}
