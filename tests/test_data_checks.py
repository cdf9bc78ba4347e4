"""check-data and the on-the-fly checks: each bad input gives its own message naming the file, exit 1."""
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from allspark.cli import main
from allspark.config.loading import config_from_dict
from allspark.data.checks import check_data
from allspark.data.datasets import ListDataset
from allspark.data.io import read_list
from allspark.data.layouts import get_layout, read_classes_file
from allspark.data.loaders import build_labeled_loader
from allspark.data.transforms import TrainTransform
from allspark.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared"


def _tree(root, count=3):
    """A good folder-layout dataset: 3 classes, `count` samples in train.txt."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background\nthing\nstuff\n")
    for i in range(count):
        Image.fromarray(np.full((12, 16, 3), 40 * i, np.uint8)).save(root / f"images/{i}.jpg")
        mask = np.zeros((12, 16), np.uint8)
        mask[2:6, 3:9], mask[0, 0] = 2, 255
        Image.fromarray(mask, mode="L").save(root / f"masks/{i}.png")
    (root / "train.txt").write_text("".join(f"images/{i}.jpg masks/{i}.png\n" for i in range(count)))
    return root


def _missing_image(root):
    (root / "images/1.jpg").unlink()
    return "images/1.jpg", "missing file (listed as image)"


def _truncated_image(root):
    data = (root / "images/1.jpg").read_bytes()
    (root / "images/1.jpg").write_bytes(data[: len(data) // 2])
    return "images/1.jpg", "unreadable or truncated image"


def _size_mismatch(root):
    Image.fromarray(np.zeros((10, 16), np.uint8), mode="L").save(root / "masks/2.png")
    return "masks/2.png", "mask size 16x10 differs from its image's 16x12"


def _bad_values(root):
    mask = np.zeros((12, 16), np.uint8)
    mask[0, :2] = (3, 7)
    Image.fromarray(mask, mode="L").save(root / "masks/0.png")
    return "masks/0.png", "mask values 3, 7 outside [0, 3) and not 255 (2 pixels)"


def _rgb_mask(root):
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(root / "masks/1.png")
    return "masks/1.png", "mask has mode RGB with 3 channels; expected a single-channel class-index PNG"


def _missing_mask(root):
    (root / "masks/0.png").unlink()
    return "masks/0.png", "missing file (listed as mask)"


def _bad_list_line(root):
    (root / "train.txt").write_text("images/0.jpg masks/0.png\nimages/1.jpg\n")
    return "train.txt", "line 2: expected 'image_path mask_path', found 1 fields"


CASES = [_missing_image, _truncated_image, _size_mismatch, _bad_values, _rgb_mask, _missing_mask, _bad_list_line]


def test_good_tree_passes(tmp_path, capsys):
    root = _tree(tmp_path / "data")
    with pytest.raises(SystemExit) as exit_info:
        main(["check-data", str(root)])
    assert exit_info.value.code == 0
    assert "3 samples in 1 lists (train)" in capsys.readouterr().out


@pytest.mark.parametrize("breaker", CASES, ids=lambda f: f.__name__)
def test_each_problem_is_reported_with_its_file(tmp_path, capsys, breaker):
    root = _tree(tmp_path / "data")
    rel, message = breaker(root)
    with pytest.raises(SystemExit) as exit_info:
        main(["check-data", str(root)])
    assert exit_info.value.code == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, lines  # one problem line + the summary
    assert lines[0].startswith(f"{root / rel}: {message}"), lines[0]
    assert lines[1].endswith("1 problem")


def test_duplicates_between_labeled_and_unlabeled(tmp_path):
    root = _tree(tmp_path / "data")
    (root / "labeled.txt").write_text("images/0.jpg masks/0.png\nimages/1.jpg masks/1.png\n")
    (root / "unlabeled.txt").write_text("images/1.jpg\nimages/2.jpg masks/2.png\n")
    problems, summary = check_data(str(root), progress=False)
    assert problems == [f"{root / 'images/1.jpg'}: listed in both labeled.txt and unlabeled.txt"]


def test_config_source_and_num_classes(tmp_path):
    root = _tree(tmp_path / "data")
    (root / "labeled.txt").write_text("images/0.jpg masks/0.png\nimages/1.jpg masks/1.png\n")
    (root / "unlabeled.txt").write_text("images/2.jpg\n")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"method": "sup", "model": {"num_classes": 3, "ablation": "none"},
                                      "data": {"root": str(root), "labeled_list": "labeled.txt",
                                               "unlabeled_list": "unlabeled.txt", "val_list": "train.txt"}}))
    problems, summary = check_data(str(config), progress=False)
    assert problems == [] and "(labeled, unlabeled, val)" in summary
    problems, _ = check_data(str(config), num_classes=2, progress=False)
    assert problems[0] == f"{root / 'classes.txt'}: lists 3 classes but model.num_classes is 2; " \
                          "set model.num_classes=3 or edit classes.txt"
    assert len(problems) == 4 and all("mask values 2 outside [0, 2)" in p for p in problems[1:])


def test_root_without_class_count_is_a_clear_error(tmp_path, capsys):
    root = _tree(tmp_path / "data")
    (root / "classes.txt").unlink()
    with pytest.raises(SystemExit) as exit_info:
        main(["check-data", str(root)])
    assert exit_info.value.code == 2
    assert "--num-classes" in capsys.readouterr().err
    assert check_data(str(root), num_classes=3, progress=False)[0] == []


def test_dataset_raises_naming_the_file(tmp_path):
    root = _tree(tmp_path / "data")
    rel, message = _bad_values(root)
    dataset = ListDataset(root, root / "train.txt", "labeled", 3, TrainTransform(16, colour=True, seed=0))
    with pytest.raises(DataError, match=re.escape(message)) as err:
        dataset[0]
    assert err.value.path == str(root / rel)
    assert dataset[1]["mask"].shape == (16, 16)


def test_dataset_skips_bad_samples_when_asked(tmp_path, caplog):
    root = _tree(tmp_path / "data")
    _truncated_image(root)
    dataset = ListDataset(root, root / "train.txt", "labeled", 3, TrainTransform(16, colour=False, seed=0),
                          skip_bad=True)
    with caplog.at_level(logging.WARNING):
        sample = dataset[1]
    assert sample["image"].shape == (3, 16, 16)
    assert str(root / "images/1.jpg") in caplog.text
    val = ListDataset(root, root / "train.txt", "val", 3, skip_bad=True)
    assert (val[1]["mask"] == 255).all() and val[1]["name"] == "1"  # left out of the metric, not replaced
    assert val[0]["mask"].shape == (12, 16)


@pytest.mark.skipif(not (SHARED / "data/camvid-mini").is_dir(), reason="../shared/data/camvid-mini is absent")
def test_camvid_mini_is_clean(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["check-data", str(SHARED / "data/camvid-mini"), "--layout", "camvid"])
    assert exit_info.value.code == 0
    assert "no problems" in capsys.readouterr().out


def test_layout_tree_without_lists_converts_label_ids(tmp_path, capsys):
    for split in ("train", "val"):
        image = tmp_path / f"leftImg8bit/{split}/ulm/ulm_000000_000019_leftImg8bit.png"
        mask = tmp_path / f"gtFine/{split}/ulm/ulm_000000_000019_gtFine_labelIds.png"
        for path in (image, mask):
            path.parent.mkdir(parents=True)
        Image.new("RGB", (4, 3)).save(image)
        Image.fromarray(np.array([[26, 7, 0, 33]] * 3, np.uint8), mode="L").save(mask)  # car, road, -, bicycle
    problems, summary = check_data(str(tmp_path), layout_name="cityscapes", progress=False)
    assert problems == [] and "2 samples in 2 lists (train, val)" in summary
    problems, _ = check_data(str(tmp_path), layout_name="pascal", progress=False)
    assert problems[0].endswith("split file of layout 'pascal' not found (expected one image stem per line "
                                "for split 'train')")


def test_comment_and_blank_lines_name_no_sample(tmp_path):
    root = _tree(tmp_path / "data")
    (root / "classes.txt").write_text("# name r g b\nbackground\nthing\n\nstuff\n")
    (root / "train.txt").write_text("# split of 2026-12-07: image mask\n\n  # images/9.jpg masks/9.png\n"
                                    "images/0.jpg masks/0.png\nimages/1.jpg masks/1.png\n")
    assert read_list(root / "train.txt", need_masks=True) == [("images/0.jpg", "masks/0.png"),
                                                               ("images/1.jpg", "masks/1.png")]
    assert len(ListDataset(root, root / "train.txt", "val", 3)) == 2
    problems, summary = check_data(str(root), progress=False)
    assert problems == [] and "2 samples" in summary and "3 classes" in summary
    assert read_classes_file(root / "classes.txt")[0] == ("background", "thing", "stuff")
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/train.txt").write_text("# stems\n2007_000032\n")
    assert [stem for stem, _ in get_layout("pascal").pairs(root, "train")] == ["JPEGImages/2007_000032.jpg"]


def test_a_list_file_is_checked_under_the_folder_its_images_are_in(tmp_path, capsys):
    root = _tree(tmp_path / "data")
    (root / "splits/1_8").mkdir(parents=True)
    listed = root / "splits/1_8/labeled.txt"
    listed.write_text("# two of three\nimages/0.jpg masks/0.png\nimages/1.jpg masks/1.png\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["check-data", str(listed)])
    assert exit_info.value.code == 0
    assert f"2 samples in 1 lists (labeled) under {root}, 3 classes: no problems" in capsys.readouterr().out
    pool = root / "pool.txt"  # images alone: masks are optional outside train/val/labeled lists
    pool.write_text("images/2.jpg\nimages/9.jpg\n")
    problems, summary = check_data(str(pool), progress=False)
    assert problems == [f"{root / 'images/9.jpg'}: missing file (listed as image)"]


# (layout, a mask the other ADE20K layout reads, the layout the message names): UniMatch V2's prepared masks hold
# 255 (ignore), which a raw ADEChallengeData2016 annotation never does; a raw one holds 150, a prepared one never
ADE_MIXUPS = [("ade20k", [[0, 5], [255, 149]], "ade20k_prepared"), ("ade20k_prepared", [[0, 5], [150, 1]], "ade20k")]


def _ade_tree(root, mask):
    """An ADE20K tree of one 2x2 training sample, listed in train.txt."""
    for folder in ("images/training", "annotations/training"):
        (root / folder).mkdir(parents=True)
    image, mask_rel = "images/training/ADE_train_00000001.jpg", "annotations/training/ADE_train_00000001.png"
    Image.new("RGB", (2, 2)).save(root / image)
    Image.fromarray(np.array(mask, np.uint8), mode="L").save(root / mask_rel)
    (root / "train.txt").write_text(f"{image} {mask_rel}\n")
    return root, root / mask_rel


@pytest.mark.parametrize("layout,mask,other", ADE_MIXUPS)
def test_check_data_names_the_ade20k_layout_that_reads_the_masks(tmp_path, capsys, layout, mask, other):
    root, mask_path = _ade_tree(tmp_path, mask)
    with pytest.raises(SystemExit) as exit_info:
        main(["check-data", str(root), "--layout", layout])
    assert exit_info.value.code == 1
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"{mask_path}: mask holds ") and first.endswith(f"set data.layout={other}")
    assert check_data(str(root), layout_name=other, progress=False)[0] == []


@pytest.mark.parametrize("skip_bad", [False, True])
@pytest.mark.parametrize("layout,mask,other", ADE_MIXUPS)
def test_training_stops_on_masks_of_the_other_ade20k_layout(tmp_path, layout, mask, other, skip_bad):
    """Through a loader worker, as training reads them; data.skip_bad_samples does not skip a whole dataset."""
    root, mask_path = _ade_tree(tmp_path, mask)
    cfg = config_from_dict({"method": "sup", "model": {"ablation": "none", "num_classes": 150, "crop_size": 32},
                            "data": {"layout": layout, "root": str(root), "labeled_list": "train.txt",
                                     "workers": 1, "skip_bad_samples": skip_bad}, "train": {"batch_size": 1}})
    with pytest.raises(DataError) as err:
        next(iter(build_labeled_loader(cfg, length=1)))
    assert err.value.path == str(mask_path) and err.value.problem.endswith(f"set data.layout={other}")
