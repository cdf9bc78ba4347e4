"""Each layout finds (image, mask) pairs in a small tree built here; class names and palettes."""
import numpy as np
import pytest
from PIL import Image

from allspark.config.loading import config_from_dict
from allspark.config.schema import LAYOUTS
from allspark.data.io import WrongLayoutDataError
from allspark.data.layouts import (CAMVID_CLASSES, CAMVID_PALETTE, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE,
                                   class_names_and_palette, cityscapes_label_ids_to_train_ids, get_layout, voc_palette)


def _write(root, rel, size=(8, 6), mode="RGB", value=0):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


@pytest.mark.parametrize("name,count", [("pascal", 21), ("cityscapes", 19), ("coco", 81), ("camvid", 11),
                                        ("ade20k", 150), ("ade20k_prepared", 150)])
def test_builtin_class_counts_and_palettes(name, count):
    layout = get_layout(name)
    assert layout.num_classes == count == len(layout.class_names)
    assert layout.palette.shape == (count, 3) and layout.palette.dtype == np.uint8
    assert len({tuple(c) for c in layout.palette}) == count  # colours tell classes apart


def test_pascal_names_file_and_aug_masks(tmp_path):
    (tmp_path / "ImageSets/Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets/Segmentation/train.txt").write_text("2007_000032\n2008_000002\n")
    for stem in ("2007_000032", "2008_000002", "2009_000001"):
        _write(tmp_path, f"JPEGImages/{stem}.jpg")
    _write(tmp_path, "SegmentationClass/2007_000032.png", mode="L")
    _write(tmp_path, "SegmentationClassAug/2008_000002.png", mode="L")
    pairs = get_layout("pascal").pairs(tmp_path, "train")
    assert pairs == [("JPEGImages/2007_000032.jpg", "SegmentationClass/2007_000032.png"),
                     ("JPEGImages/2008_000002.jpg", "SegmentationClassAug/2008_000002.png")]
    with pytest.raises(FileNotFoundError, match="val.txt"):
        get_layout("pascal").pairs(tmp_path, "val")


def test_cityscapes_train_ids_and_label_ids_fallback(tmp_path):
    _write(tmp_path, "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png")
    _write(tmp_path, "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png", mode="L")
    _write(tmp_path, "leftImg8bit/train/bremen/bremen_000001_000019_leftImg8bit.png")
    _write(tmp_path, "gtFine/train/bremen/bremen_000001_000019_gtFine_labelIds.png", mode="L")
    layout = get_layout("cityscapes")
    pairs = layout.pairs(tmp_path, "train")
    assert pairs == [
        ("leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png",
         "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"),
        ("leftImg8bit/train/bremen/bremen_000001_000019_leftImg8bit.png",
         "gtFine/train/bremen/bremen_000001_000019_gtFine_labelIds.png"),
    ]
    ids = np.array([[7, 8, 0, 33], [26, 24, 1, 255]], np.uint8)
    expected = np.array([[0, 1, 255, 18], [13, 11, 255, 255]], np.uint8)
    np.testing.assert_array_equal(cityscapes_label_ids_to_train_ids(ids), expected)
    np.testing.assert_array_equal(layout.convert_mask(ids, pairs[1][1]), expected)
    np.testing.assert_array_equal(layout.convert_mask(ids, pairs[0][1]), ids)  # train ids pass through


def test_coco_ssss_tree(tmp_path):
    _write(tmp_path, "train2017/000000000009.jpg")
    _write(tmp_path, "masks/train2017/000000000009.png", mode="L")
    _write(tmp_path, "train2017/000000000025.jpg")
    _write(tmp_path, "masks/000000000025.png", mode="L")  # UniMatch V2's download: one flat masks/ folder
    _write(tmp_path, "val2017/000000000139.jpg")
    layout = get_layout("coco")
    assert layout.pairs(tmp_path, "train2017") == [("train2017/000000000009.jpg", "masks/train2017/000000000009.png"),
                                                   ("train2017/000000000025.jpg", "masks/000000000025.png")]
    assert layout.pairs(tmp_path, "val2017") == [("val2017/000000000139.jpg", "masks/val2017/000000000139.png")]


def test_ade20k_tree_and_the_releases_preparation_of_raw_annotations(tmp_path):
    for split, stem in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        _write(tmp_path, f"images/{split}/{stem}.jpg")
        _write(tmp_path, f"annotations/{split}/{stem}.png", mode="L")
    raw, prepared = get_layout("ade20k"), get_layout("ade20k_prepared")
    for layout in (raw, prepared):
        assert layout.pairs(tmp_path, "training") == [("images/training/ADE_train_00000001.jpg",
                                                       "annotations/training/ADE_train_00000001.png")]
        assert layout.pairs(tmp_path, "validation")[0][1] == "annotations/validation/ADE_val_00000001.png"
    assert raw.class_names[0] == "wall" and raw.class_names[-1] == "flag"
    annotation = np.array([[0, 1, 2], [150, 149, 0]], np.uint8)  # 0 = "other", k = class k - 1
    train_ids = raw.convert_mask(annotation, "annotations/training/x.png")
    np.testing.assert_array_equal(train_ids, [[255, 0, 1], [149, 148, 255]])
    np.testing.assert_array_equal(prepared.convert_mask(train_ids, "annotations/training/x.png"), train_ids)


@pytest.mark.parametrize("layout,mask,other", [("ade20k", [[0, 5, 255]], "ade20k_prepared"),
                                               ("ade20k_prepared", [[0, 5, 150]], "ade20k")])
def test_each_ade20k_layout_refuses_the_others_masks(layout, mask, other):
    with pytest.raises(WrongLayoutDataError) as err:
        get_layout(layout).convert_mask(np.array(mask, np.uint8), "annotations/training/x.png")
    assert str(err.value).startswith("annotations/training/x.png: mask holds ")
    assert str(err.value).endswith(f"set data.layout={other}") and "\n" not in str(err.value)


@pytest.mark.parametrize("image,mask", [("images/train/a.jpg", "labels/train/a.png"), ("train/a.png", "trainannot/a.png")])
def test_camvid_trees(tmp_path, image, mask):
    _write(tmp_path, image)
    _write(tmp_path, mask, mode="L")
    assert get_layout("camvid").pairs(tmp_path, "train") == [(image, mask)]


def test_folder_layout_classes_file_and_nested_stems(tmp_path):
    (tmp_path / "classes.txt").write_text("background\nroad 128 64 128\n\ntraffic sign 220 220 0\n")
    _write(tmp_path, "images/a.jpg")
    _write(tmp_path, "images/city/b.png")
    _write(tmp_path, "masks/a.png", mode="L")
    _write(tmp_path, "masks/city/b.png", mode="L")
    (tmp_path / "images/notes.txt").write_text("not an image")
    layout = get_layout("folder", tmp_path)
    assert layout.class_names == ("background", "road", "traffic sign")
    np.testing.assert_array_equal(layout.palette[1:], [[128, 64, 128], [220, 220, 0]])
    assert layout.pairs(tmp_path) == [("images/a.jpg", "masks/a.png"), ("images/city/b.png", "masks/city/b.png")]


def test_folder_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="classes.txt"):
        get_layout("folder", tmp_path)
    with pytest.raises(ValueError, match="needs the dataset root"):
        get_layout("synthetic")
    with pytest.raises(ValueError, match="unknown layout 'voc'"):
        get_layout("voc")
    (tmp_path / "classes.txt").write_text("sky 300 0 0\n")
    with pytest.raises(ValueError, match="line 1: colour values must be 0..255"):
        get_layout("folder", tmp_path)


def _cfg(layout, num_classes, root=""):
    return config_from_dict({"model": {"num_classes": num_classes}, "data": {"layout": layout, "root": str(root)}})


def test_camvid_models_get_camvid_colours_from_the_layout_or_a_names_only_classes_file(tmp_path):
    names, palette = class_names_and_palette(_cfg("camvid", 11))
    np.testing.assert_array_equal(palette, CAMVID_PALETTE)
    assert names == list(CAMVID_CLASSES)
    (tmp_path / "classes.txt").write_text("\n".join(CAMVID_CLASSES) + "\n")
    np.testing.assert_array_equal(class_names_and_palette(_cfg("folder", 11, tmp_path))[1], CAMVID_PALETTE)
    (tmp_path / "classes.txt").write_text("\n".join(CAMVID_CLASSES[::-1]) + "\n")  # not CamVid's order: VOC
    np.testing.assert_array_equal(class_names_and_palette(_cfg("folder", 11, tmp_path))[1], voc_palette(11))


@pytest.mark.parametrize("num_classes", [5, 19, 25])
def test_class_names_need_exactly_k_classes_else_indices(num_classes):
    """One rule for eval.json, metrics, predict and export: the layout's names only when it has exactly K classes
    (a prefix of Cityscapes' names would label a 5-class model's outputs wrongly)."""
    names, palette = class_names_and_palette(_cfg("cityscapes", num_classes))
    if num_classes == 19:
        assert names == list(CITYSCAPES_CLASSES)
        np.testing.assert_array_equal(palette, CITYSCAPES_PALETTE)
    else:
        assert names == [str(i) for i in range(num_classes)]
        np.testing.assert_array_equal(palette, voc_palette(num_classes))
    assert palette.shape == (num_classes, 3) and palette.dtype == np.uint8


def test_class_names_of_an_unreadable_folder_layout_are_indices(tmp_path):
    names, palette = class_names_and_palette(_cfg("folder", 3, tmp_path / "elsewhere"))
    assert names == ["0", "1", "2"]
    np.testing.assert_array_equal(palette, voc_palette(3))


def test_every_layout_name_of_the_config_is_a_layout(tmp_path):
    (tmp_path / "classes.txt").write_text("background\nthing\n")
    assert [get_layout(name, tmp_path).name for name in LAYOUTS] == list(LAYOUTS)
    with pytest.raises(ValueError, match="unknown layout 'voc'"):
        get_layout("voc")

