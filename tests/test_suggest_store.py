"""The score store of `allspark suggest` (OUT/scoring/) after the list, the labeled masks, an image or the model
changes: only new or changed images are scored, every output row is an image of the current list with the score
it was given, suggested.txt is the top of scores.csv, and another model is refused."""
import csv
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from allspark.errors import UsageError
from allspark.suggest import outputs as suggest_outputs
from allspark.suggest import run as suggest_module
from inference_helpers import run_cli, tiny_checkpoint, write_images
from suggest_helpers import colour_image, fixed_model, run_suggest, write_list  # noqa: F401 (a fixture)


@pytest.fixture
def scored(monkeypatch):
    """The images each call of score_pool was asked to score, in order."""
    calls: list[list[str]] = []
    real = suggest_module.score_pool

    def spy(model, root, entries, out, indices, *args, **kwargs):
        calls.append([entries[i][0] for i in indices])
        return real(model, root, entries, out, indices, *args, **kwargs)
    monkeypatch.setattr(suggest_module, "score_pool", spy)
    return calls


def _lines(tmp_path, count, start=0):
    """`count` images of random colours; every third line names a mask (not read: the line carries it)."""
    rng = np.random.default_rng(start)
    root = tmp_path / "data"
    lines = []
    for i in range(start, start + count):
        image = colour_image(root, f"img{i}.png", rng.integers(0, 256, 3))
        lines.append(f"{image} masks/img{i}.png" if i % 3 == 0 else image)
    return lines


def _outputs(out):
    """(scores.csv rows, suggested.txt lines)."""
    with open(out / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return rows, (out / "suggested.txt").read_text().splitlines()


def _assert_agree(rows, suggested, lines):
    """scores.csv holds every line of `lines` once, in order; suggested.txt is its ranked rows, best first."""
    assert [" ".join(p for p in (row["image"], row["mask"]) if p) for row in rows] == lines
    ranked = sorted((row for row in rows if row["rank"]), key=lambda row: int(row["rank"]))
    assert [" ".join(p for p in (row["image"], row["mask"]) if p) for row in ranked] == suggested


def test_changed_list_scores_only_new_lines(tmp_path, fixed_model, scored):
    first = _lines(tmp_path, 10)
    run_suggest(tmp_path, first, 4)
    before = {row["image"]: row for row in _outputs(tmp_path / "out")[0]}
    added = _lines(tmp_path, 2, start=10)
    second = first[:3] + first[6:] + added  # 3 lines gone from the middle, 2 new ones
    second = second[::2] + second[1::2]  # reordered
    said = []
    run_suggest(tmp_path, second, 4, say=said.append)
    assert scored[1] == sorted((line.split()[0] for line in added), key=[x.split()[0] for x in second].index)
    assert said[0].startswith("precision: ")  # the first line, then the counts
    assert said[1].startswith("scoring 2 of 9 images") and "(7 scored before)" in said[1]
    assert "dropped the scores of 3 images" in said[1]
    rows, suggested = _outputs(tmp_path / "out")
    _assert_agree(rows, suggested, second)
    for row in rows:
        if row["image"] in before:
            assert {key: row[key] for key in ("uncertainty", "score")} == \
                {key: before[row["image"]][key] for key in ("uncertainty", "score")}
    fresh, _ = run_suggest(tmp_path, second, 4, out="fresh")  # the same ranking as scoring the new list afresh
    assert _outputs(tmp_path / "fresh") == (rows, suggested) and fresh == [line.split()[0] for line in suggested]


def test_changed_labeled_masks_rank_again_without_scoring(tmp_path, fixed_model, scored):
    root = tmp_path / "data"
    lines = [colour_image(root, "greenish.png", (80, 180, 80)), colour_image(root, "bluish.png", (80, 80, 180))]
    run_suggest(tmp_path, lines, 1, "uncertainty")
    assert [float(row["rarity"]) for row in _outputs(tmp_path / "out")[0]] == [0.0, 0.0]
    (root / "masks").mkdir()
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 1  # the labeled masks now hold classes 0 and 1, no class 2: bluish is lifted
    Image.fromarray(mask).save(root / "masks" / "l.png")
    labeled = write_list(tmp_path / "labeled.txt", [f"{colour_image(root, 'l.png', (255, 0, 0))} masks/l.png"])
    chosen, _ = run_suggest(tmp_path, lines, 1, "uncertainty", labeled=labeled)
    assert scored[1] == [] and chosen == ["images/bluish.png"]
    assert [float(row["rarity"]) for row in _outputs(tmp_path / "out")[0]] == [0.0, 1.0]


def test_changed_image_file_is_scored_again(tmp_path, fixed_model, scored):
    lines = _lines(tmp_path, 4)
    run_suggest(tmp_path, lines, 2)
    path = tmp_path / "data" / lines[1]
    colour_image(tmp_path / "data", path.name, (128, 128, 128))  # grey: the most uncertain
    os.utime(path, ns=(1, 1))
    chosen, _ = run_suggest(tmp_path, lines, 2)
    assert scored[1] == [lines[1]] and chosen[0] == lines[1]
    _assert_agree(*_outputs(tmp_path / "out"), lines)


def test_repeated_rows_from_a_killed_clean_up_are_dropped(tmp_path, fixed_model, scored):
    lines = _lines(tmp_path, 5)
    run_suggest(tmp_path, lines, 2)
    whole = _outputs(tmp_path / "out")
    scoring = tmp_path / "out" / "scoring"
    for kind, suffix in (("rows", "csv"), ("features", "f32")):  # the fresh part written, the old one not removed
        shutil.copyfile(scoring / f"{kind}.0.{suffix}", scoring / f"{kind}.3.{suffix}")
    said = []
    run_suggest(tmp_path, lines[1:] + lines[:1], 2, say=said.append)
    assert scored[1] == [] and said[1].startswith("scoring 0 of 5 images") and said[1].endswith("(5 scored before)")
    assert sorted(path.name for path in scoring.glob("rows.*")) == ["rows.4.csv"]
    rows, suggested = _outputs(tmp_path / "out")
    _assert_agree(rows, suggested, lines[1:] + lines[:1])
    assert sorted(rows, key=lambda row: row["image"]) == sorted(whole[0], key=lambda row: row["image"])


@pytest.mark.parametrize("change", ["weights", "max_side"])
def test_another_model_is_refused_without_force(tmp_path, fixed_model, scored, change):
    lines = _lines(tmp_path, 4)
    run_suggest(tmp_path, lines, 2)
    before = _outputs(tmp_path / "out")
    kwargs = {"max_side": 512} if change == "max_side" else {}
    if change == "weights":
        fixed_model(gain=9.0)
    with pytest.raises(UsageError, match="another model") as refused:
        run_suggest(tmp_path, lines, 2, **kwargs)
    named = "other weights" if change == "weights" else "max_side 1024, now 512"
    assert "\n" not in str(refused.value) and named in str(refused.value)
    assert _outputs(tmp_path / "out") == before and len(scored) == 1
    run_suggest(tmp_path, lines, 2, force=True, **kwargs)
    assert scored[1] == [line.split()[0] for line in lines]


def test_a_kill_between_the_two_outputs_leaves_no_suggestion(tmp_path, fixed_model, monkeypatch):
    lines = _lines(tmp_path, 6)
    run_suggest(tmp_path, lines, 2, exports=["cvat"])
    (tmp_path / "out" / "contact_sheet.png").write_bytes(b"the last run's sheet")
    assert (tmp_path / "out" / "cvat" / "annotations.zip").is_file()
    real = suggest_outputs.atomic_write

    def killed_at_suggested(path, write):
        if path.name == "suggested.txt":
            raise KeyboardInterrupt
        real(path, write)
    monkeypatch.setattr(suggest_outputs, "atomic_write", killed_at_suggested)
    with pytest.raises(KeyboardInterrupt):
        run_suggest(tmp_path, lines[3:] + lines[:3], 2)
    out = tmp_path / "out"
    assert (out / "scores.csv").is_file() and not (out / "suggested.txt").exists()
    assert not (out / "contact_sheet.png").exists() and not (out / "cvat" / "annotations.zip").exists()


def test_a_store_of_the_older_format_is_refused_in_one_line(tmp_path, fixed_model):
    lines = _lines(tmp_path, 3)
    scoring = tmp_path / "out" / "scoring"
    scoring.mkdir(parents=True)
    (scoring / "source.json").write_text('{"weights": "/old/best.safetensors", "size": 1, "mtime_ns": 2, '
                                         '"list": "/old/unlabeled.txt", "max_side": 1024}\n')
    with pytest.raises(UsageError, match="written by an older allspark.*--force"):
        run_suggest(tmp_path, lines, 1)
    run_suggest(tmp_path, lines, 1, force=True)


def test_after_splits_add_the_command_suggests_none_of_the_moved_images(tmp_path, capsys):
    """The issue's case: suggest, move the suggestions to the labeled list, suggest into the same --out."""
    weights = tiny_checkpoint(tmp_path / "run")
    root = tmp_path / "data"
    images = write_images(root / "images", [(40, 40)] * 12)
    (root / "masks").mkdir()
    for path in images:
        Image.fromarray(np.full((40, 40), int(path.stem[3:]) % 3, np.uint8)).save(root / "masks" / path.name)
    splits = root / "splits"
    splits.mkdir()
    write_list(splits / "labeled.txt", [f"images/{p.name} masks/{p.name}" for p in images[:2]])
    write_list(splits / "unlabeled.txt", [f"images/{p.name} masks/{p.name}" for p in images[2:]])
    command = ["suggest", "--checkpoint", str(weights), "--count", "3", "--list", str(splits / "unlabeled.txt"),
               "--labeled", str(splits / "labeled.txt"), "--root", str(root), "--out", str(tmp_path / "out"),
               "--threads", "1", "--device", "cpu"]
    assert run_cli(command) == 0
    moved = (tmp_path / "out" / "suggested.txt").read_text().splitlines()
    assert run_cli(["splits", "--add", str(tmp_path / "out" / "suggested.txt"), "--out", str(splits)]) == 0
    capsys.readouterr()
    assert run_cli(command) == 0
    said = capsys.readouterr().out.splitlines()[1]  # after the precision line
    assert said.startswith("scoring 0 of 7 images") and "(7 scored before); dropped the scores of 3 images" in said
    rows, suggested = _outputs(tmp_path / "out")
    _assert_agree(rows, suggested, (splits / "unlabeled.txt").read_text().splitlines())
    assert not set(suggested) & set(moved)
