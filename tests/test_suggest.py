"""`allspark suggest` and `allspark splits --add`: the ranking on a model whose predictions are fixed by the
image's colour, resume after a kill, the one-line errors, and moving labelled images between the lists."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference_helpers import run_cli, tiny_checkpoint, write_images
from suggest_helpers import colour_image, fixed_model, run_suggest, write_list  # noqa: F401 (a fixture)


def test_most_uncertain_ranks_first(tmp_path, fixed_model):
    root = tmp_path / "data"
    lines = [colour_image(root, "red.png", (255, 0, 0)), colour_image(root, "reddish.png", (200, 90, 60)),
             colour_image(root, "grey.png", (128, 128, 128))]
    for strategy in ("both", "uncertainty"):
        chosen, result = run_suggest(tmp_path, lines, 3, strategy, force=True)
        assert chosen[0] == "images/grey.png", strategy
        assert [row["image"] for row in result.chosen] == chosen
    scores = {row["image"]: float(row["uncertainty"]) for row in result.chosen}
    assert scores["images/grey.png"] == pytest.approx(1.0, abs=1e-5)
    assert scores["images/grey.png"] > scores["images/reddish.png"] > scores["images/red.png"]


def test_exact_duplicates_not_both_chosen(tmp_path, fixed_model):
    root = tmp_path / "data"
    lines = [colour_image(root, "grey.png", (128, 128, 128)), colour_image(root, "grey_copy.png", (128, 128, 128)),
             colour_image(root, "reddish.png", (200, 90, 60)), colour_image(root, "red.png", (255, 0, 0))]
    chosen, _ = run_suggest(tmp_path, lines, 2, "both")
    assert chosen == ["images/grey.png", "images/reddish.png"]
    chosen, _ = run_suggest(tmp_path, lines, 2, "uncertainty", force=True)  # without diversity the copy comes second
    assert chosen == ["images/grey.png", "images/grey_copy.png"]
    chosen, _ = run_suggest(tmp_path, lines, 3, "diversity", force=True)
    assert not {"images/grey.png", "images/grey_copy.png"} <= set(chosen)


def test_rare_class_lifts_its_image(tmp_path, fixed_model):
    root = tmp_path / "data"
    (root / "masks").mkdir(parents=True)
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 1  # the labeled set: classes 0 and 1 in equal shares, no class 2
    Image.fromarray(mask).save(root / "masks" / "l.png")
    labeled = write_list(tmp_path / "labeled.txt", [f"{colour_image(root, 'l.png', (255, 0, 0))} masks/l.png"])
    greenish = colour_image(root, "greenish.png", (80, 180, 80))  # class 1, common in the labeled set
    bluish = colour_image(root, "bluish.png", (80, 80, 180))  # class 2, absent from it: the same uncertainty
    chosen, result = run_suggest(tmp_path, [greenish, bluish], 2, "uncertainty", labeled=labeled)
    assert chosen == [bluish, greenish]
    rows = {row["image"]: row for row in result.chosen}
    assert float(rows[bluish]["uncertainty"]) == pytest.approx(float(rows[greenish]["uncertainty"]), rel=1e-4)
    assert (float(rows[bluish]["rarity"]), float(rows[greenish]["rarity"])) == (1.0, 0.0)
    _, result = run_suggest(tmp_path, [greenish, bluish], 2, "uncertainty", force=True)  # no labeled masks: no lift
    scores = [float(row["score"]) for row in result.chosen]
    assert [float(row["rarity"]) for row in result.chosen] == [0.0, 0.0] and scores[0] == pytest.approx(scores[1])


def test_resume_after_kill_gives_the_same_ranking(tmp_path, fixed_model):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    lines = [colour_image(root, f"img{i}.png", rng.integers(0, 256, 3)) for i in range(7)]
    whole, _ = run_suggest(tmp_path, lines, 4, out="whole")
    fixed_model(stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        run_suggest(tmp_path, lines, 4, out="killed")
    scoring = tmp_path / "killed" / "scoring"
    assert len((scoring / "rows.0.csv").read_text().splitlines()) == 1 + 3
    with open(scoring / "features.0.f32", "ab") as handle:  # killed after a batch's features, inside its row
        handle.write(np.ones(3, np.float32).tobytes())
    with open(scoring / "rows.0.csv", "a") as handle:
        handle.write("images/img3.png,100,12")
    fixed_model()  # resumed: only the four images left are scored
    resumed, _ = run_suggest(tmp_path, lines, 4, out="killed")
    assert resumed == whole
    assert (tmp_path / "killed" / "scores.csv").read_text() == (tmp_path / "whole" / "scores.csv").read_text()


def test_command_writes_lists_scores_and_sheet(tmp_path, capsys):
    weights = tiny_checkpoint(tmp_path / "run")
    images = write_images(tmp_path / "data" / "images", [(40, 48)] * 4 + [(36, 36)])
    pool = write_list(tmp_path / "pool.txt", [f"images/{p.name}" for p in images])
    assert run_cli(["suggest", "--checkpoint", str(weights), "--count", "3", "--list", str(pool), "--root",
                    str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--threads", "1", "--device", "cpu"]) == 0
    suggested = (tmp_path / "out" / "suggested.txt").read_text().splitlines()
    assert len(suggested) == 3 and len(set(suggested)) == 3 and set(suggested) <= set(pool.read_text().splitlines())
    rows = (tmp_path / "out" / "scores.csv").read_text().splitlines()
    assert rows[0] == "rank,image,mask,uncertainty,rarity,score,classes" and len(rows) == 1 + 5
    assert sorted(line.split(",")[0] for line in rows[1:]) == ["", "", "1", "2", "3"]
    with Image.open(tmp_path / "out" / "contact_sheet.png") as sheet:
        assert sheet.width >= 3 * 2 * 160


def test_two_ranks_share_the_scoring_and_rank_as_one_process(tmp_path):
    weights = tiny_checkpoint(tmp_path / "run")
    images = write_images(tmp_path / "data" / "images", [(40, 40)] * 5)
    pool = write_list(tmp_path / "pool.txt", [f"images/{p.name}" for p in images])
    common = ["suggest", "--checkpoint", str(weights), "--count", "3", "--list", str(pool), "--root",
              str(tmp_path / "data"), "--threads", "1", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    for out, launcher in (("one", []), ("two", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"])):
        done = subprocess.run([sys.executable, *launcher, "-m", "allspark", *common, "--out", str(tmp_path / out)],
                              capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
    shares = [len((tmp_path / "two" / "scoring" / f"rows.{r}.csv").read_text().splitlines()) - 1 for r in (0, 1)]
    assert shares == [3, 2]
    assert (tmp_path / "two" / "suggested.txt").read_text() == (tmp_path / "one" / "suggested.txt").read_text()
    assert (tmp_path / "two" / "scores.csv").read_text() == (tmp_path / "one" / "scores.csv").read_text()


@pytest.mark.parametrize("case", ["missing checkpoint", "empty list", "count over list", "unreadable image"])
def test_bad_input_one_line_and_nonzero_exit(tmp_path, capsys, case):
    weights = tiny_checkpoint(tmp_path / "run")
    images = write_images(tmp_path / "data" / "images", [(40, 40)] * 2)
    lines = [f"images/{p.name}" for p in images]
    checkpoint, count = str(weights), "1"
    if case == "missing checkpoint":
        checkpoint = str(tmp_path / "nowhere.safetensors")
    elif case == "empty list":
        lines = []
    elif case == "count over list":
        count = "3"
    else:
        (tmp_path / "data" / "images" / "img1.png").write_bytes(b"not a png")
    pool = write_list(tmp_path / "pool.txt", lines)
    code = run_cli(["suggest", "--checkpoint", checkpoint, "--count", count, "--list", str(pool), "--root",
                    str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--threads", "1", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("allspark suggest: error:")]
    assert code != 0 and len(errors) == 1 and "Traceback" not in "\n".join(err)
    expected = {"missing checkpoint": "nowhere.safetensors", "empty list": "pool.txt", "count over list": "--count 3",
                "unreadable image": "img1.png"}[case]
    assert expected in errors[0]


def _splits(tmp_path):
    root = tmp_path / "data"
    (root / "masks").mkdir(parents=True)
    names = [f"i{k}" for k in range(6)]
    for name in names[:4]:
        (root / "masks" / f"{name}.png").write_bytes(b"mask")
    (root / "splits").mkdir()
    write_list(root / "splits" / "labeled.txt", [f"images/{n}.png masks/{n}.png" for n in names[:2]])
    write_list(root / "splits" / "unlabeled.txt", [f"images/{n}.png masks/{n}.png" for n in names[2:4]]
          + [f"images/{n}.png" for n in names[4:]])
    return root


def _entries(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines()]


def test_splits_add_keeps_lists_disjoint_and_complete(tmp_path, capsys):
    root = _splits(tmp_path)
    splits = root / "splits"
    before = set(_entries(splits / "labeled.txt")) | set(_entries(splits / "unlabeled.txt"))
    suggested = write_list(tmp_path / "suggested.txt", ["images/i3.png", "images/i0.png", "images/i5.png masks/i2.png",
                                                   "images/i3.png"])
    assert run_cli(["splits", "--add", str(suggested), "--out", str(splits)]) == 0
    labeled, unlabeled = _entries(splits / "labeled.txt"), _entries(splits / "unlabeled.txt")
    assert labeled == ["images/i0.png", "images/i1.png", "images/i3.png", "images/i5.png"]
    assert unlabeled == ["images/i2.png", "images/i4.png"]
    assert set(labeled) | set(unlabeled) == before and not set(labeled) & set(unlabeled)
    assert "images/i5.png masks/i2.png" in (splits / "labeled.txt").read_text()


def test_splits_add_refuses_images_without_masks(tmp_path, capsys):
    root = _splits(tmp_path)
    splits = root / "splits"
    before = [(splits / name).read_text() for name in ("labeled.txt", "unlabeled.txt")]
    suggested = write_list(tmp_path / "suggested.txt", ["images/i2.png", "images/i4.png", "images/i5.png masks/i9.png"])
    assert run_cli(["splits", "--add", str(suggested), "--out", str(splits)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no mask" in err[0] and "images/i4.png" in err[0] and "images/i5.png" in err[0]
    assert "images/i2.png" not in err[0]
    assert [(splits / name).read_text() for name in ("labeled.txt", "unlabeled.txt")] == before


def test_splits_add_finds_the_data_root_of_a_presets_split_folder(tmp_path, capsys):
    root = _splits(tmp_path)
    splits = root / "splits" / "1_8"  # the presets' layout: ROOT/splits/1_8/{labeled,unlabeled}.txt
    splits.mkdir()
    for name in ("labeled.txt", "unlabeled.txt"):
        (root / "splits" / name).rename(splits / name)
    (splits / "labeled.txt").write_text("# labelled by hand\n" + (splits / "labeled.txt").read_text())
    suggested = write_list(tmp_path / "suggested.txt", ["images/i2.png"])
    assert run_cli(["splits", "--add", str(suggested), "--out", str(splits)]) == 0
    assert (splits / "labeled.txt").read_text().splitlines()[::3] == ["# labelled by hand", "images/i2.png masks/i2.png"]
    assert "(3 images)" in capsys.readouterr().out
    (tmp_path / "else").mkdir()
    elsewhere = write_list(tmp_path / "else" / "labeled.txt", ["x/a.png x/a.png"])
    write_list(tmp_path / "else" / "unlabeled.txt", ["x/b.png"])
    assert run_cli(["splits", "--add", str(write_list(tmp_path / "s.txt", ["x/b.png"])), "--out", str(elsewhere.parent)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"neither under {elsewhere.parent} nor under any folder above it; pass --root" in err[0]
