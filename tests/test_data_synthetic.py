"""The built-in synthetic dataset: seeded, exact masks, folder layout that check-data accepts."""
import numpy as np
import pytest
from PIL import Image

from allspark.data.checks import check_data
from allspark.data.layouts import get_layout
from allspark.data.synthetic import MAX_CLASSES, generate_synthetic, render_scene


def test_writes_a_clean_folder_dataset(tmp_path):
    root = generate_synthetic(tmp_path / "syn", num_train=6, num_val=3, size=(48, 32), num_classes=4)
    layout = get_layout("synthetic", root)
    assert layout.class_names[0] == "background" and layout.num_classes == 4
    assert len((root / "train.txt").read_text().splitlines()) == 6
    assert len((root / "val.txt").read_text().splitlines()) == 3
    assert Image.open(root / "images/train_00000.jpg").size == (48, 32)
    problems, _ = check_data(str(root), progress=False)
    assert problems == []


def test_seeded():
    first = render_scene(np.random.default_rng(4), 40, 40, 5)
    again = render_scene(np.random.default_rng(4), 40, 40, 5)
    other = render_scene(np.random.default_rng(5), 40, 40, 5)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_every_class_appears_and_colours_vary_within_a_class():
    rng = np.random.default_rng(0)
    seen, colours = set(), {}
    for _ in range(40):
        image, mask = render_scene(rng, 64, 64, MAX_CLASSES)
        seen |= set(np.unique(mask).tolist())
        for cls in np.unique(mask)[1:]:
            colours.setdefault(int(cls), []).append(image[mask == cls].astype(float).mean(0))
    assert seen == set(range(MAX_CLASSES))
    spread = np.mean([np.std(c, 0).mean() for c in colours.values()])  # instance colours within a class
    means = np.array([np.mean(c, 0) for c in colours.values()])
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1) + np.eye(len(means)) * 1e3
    # each class has its own hue family, but a few instances do not cover its brightness and saturation
    assert spread > 25 and 15 < distances.min() < 2 * spread
    image, mask = render_scene(np.random.default_rng(1), 64, 64, 3)
    assert mask.max() <= 2


def test_rejects_bad_class_count(tmp_path):
    with pytest.raises(ValueError, match=f"num_classes must be in \\[2, {MAX_CLASSES}\\]"):
        generate_synthetic(tmp_path, num_classes=1)
