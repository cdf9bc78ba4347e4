"""The built-in synthetic dataset: seeded, exact masks, folder layout that check-data accepts."""
import colorsys
import hashlib

import numpy as np
import pytest
from PIL import Image

from allspark.data.checks import check_data
from allspark.data.layouts import get_layout
from allspark.data.synthetic import (HUE_JITTER, MAX_CLASSES, SHAPES, SOURCE_SHAPES, _shape, _texture,
                                     generate_synthetic, render_scene)


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


# sha256 of image and mask bytes of render_scene(default_rng(seed), 40, 48, n) for seeds 0-2 and n in (4, 8),
# computed with the code before the source table existed: the demo's data must not change.
DEMO_FINGERPRINT = "0ecc56524a0f09d798aeca365b7bb4a9690b052a3b4fefd9d50b2f53629b8b4a"


def test_default_scenes_unchanged():
    digest = hashlib.sha256()
    for seed in (0, 1, 2):
        for num_classes in (4, MAX_CLASSES):
            image, mask = render_scene(np.random.default_rng(seed), 40, 48, num_classes)
            digest.update(image.tobytes())
            digest.update(mask.tobytes())
    assert digest.hexdigest() == DEMO_FINGERPRINT


def _hue_distance(a: float, b: float) -> float:
    return min(abs(a - b), 1 - abs(a - b))


def test_source_classes_share_no_shape_hue_or_texture_with_the_demos():
    demo = SHAPES[:3]  # the demo's num_classes=4
    assert not {name for name, _, _ in demo} & {name for name, _, _ in SOURCE_SHAPES}
    assert not {kind for _, _, kind in demo} & {kind for _, _, kind in SOURCE_SHAPES}
    # jittered hue ranges of a demo class and a source class never meet
    assert min(_hue_distance(a, b) for _, a, _ in demo for _, b, _ in SOURCE_SHAPES) >= 2 * HUE_JITTER


def test_source_shapes_and_textures_are_their_own():
    """A misspelled name would fall through to the bar shape or the plain texture."""
    y, x = np.mgrid[-40:41, -40:41].astype(np.float32)
    bar, plain = _shape("bar", x, y, 30.0), _texture("plain", x, y, 8.0, np.random.default_rng(0))
    for name, _, kind in SOURCE_SHAPES:
        inside = _shape(name, x, y, 30.0)
        assert inside.any() and not np.array_equal(inside, bar), name
        assert not (inside & (x * x + y * y >= 36.0 ** 2)).any(), name  # within render_scene's reach of 1.2 r
        pattern = _texture(kind, x, y, 8.0, np.random.default_rng(0))
        assert 0.2 < pattern.mean() < 0.8 and not np.array_equal(pattern, plain), kind


def test_source_masks_hold_source_classes_where_their_hues_are(tmp_path):
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(30):
        image, mask = render_scene(rng, 64, 64, len(SOURCE_SHAPES) + 1, "source")
        seen |= set(np.unique(mask).tolist())
        for cls in np.unique(mask)[1:]:
            r, g, b = image[mask == cls].astype(float).mean(0) / 255
            hue = colorsys.rgb_to_hsv(r, g, b)[0]
            assert _hue_distance(hue, SOURCE_SHAPES[cls - 1][1]) < HUE_JITTER + 0.04
    assert seen == set(range(len(SOURCE_SHAPES) + 1))
    root = generate_synthetic(tmp_path / "src", num_train=4, num_val=2, size=48, num_classes=5, classes="source")
    assert get_layout("synthetic", root).class_names == ("background", *(name for name, _, _ in SOURCE_SHAPES))
    assert check_data(str(root), progress=False)[0] == []
    with pytest.raises(ValueError, match=r"num_classes must be in \[2, 5\]"):
        generate_synthetic(tmp_path / "bad", num_classes=6, classes="source")
    with pytest.raises(ValueError, match="classes must be one of demo, source; got 'target'"):
        render_scene(rng, 8, 8, 3, "target")
