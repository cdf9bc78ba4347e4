"""The release's long-side rescale: PIL bilinear (antialiased) images, PIL nearest masks, seeded draws."""
import albumentations as A
import numpy as np
import pytest
from PIL import Image

from allspark.data.rescale import LongSideRescale, rescaled_size


def _sample(height=60, width=90, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    y, x = np.mgrid[0:height, 0:width]
    mask = np.where((y // 10 + x // 15) % 2 == 0, 3, 7).astype(np.uint8)
    mask[:5] = 255
    return image, mask


def _rescale(image, mask, seed):
    out = A.Compose([LongSideRescale((0.5, 2.0))], seed=seed)(image=image, mask=mask)
    return out["image"], out["mask"]


def test_size_rule_keeps_the_aspect_ratio_rounding_half_up():
    assert rescaled_size(60, 90, 45) == (30, 45)
    assert rescaled_size(90, 60, 45) == (45, 30)
    assert rescaled_size(64, 96, 97) == (65, 97)  # 64.67 -> 65
    assert rescaled_size(50, 50, 73) == (73, 73)


@pytest.mark.parametrize("seed", range(6))
def test_output_equals_pil_resizes_of_the_input(seed):
    image, mask = _sample()
    out_image, out_mask = _rescale(image, mask, seed)
    oh, ow = out_mask.shape
    assert out_image.shape == (oh, ow, 3)
    assert 45 <= ow <= 180 and (oh, ow) == rescaled_size(60, 90, ow)
    pil = np.array(Image.fromarray(image).resize((ow, oh), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out_image, pil)
    np.testing.assert_array_equal(out_mask, np.array(Image.fromarray(mask).resize((ow, oh), Image.Resampling.NEAREST)))
    assert set(np.unique(out_mask)) <= {3, 7, 255}


def test_downscale_is_antialiased_unlike_opencv_linear():
    """Stripes one pixel wide shrunk to about half: PIL averages them to grey, OpenCV's 2-tap linear
    sampling mostly lands on single stripes and keeps a strong beat pattern (aliasing)."""
    import cv2

    image = np.zeros((60, 90, 3), np.uint8)
    image[:, ::2] = 255
    out = A.Compose([LongSideRescale((0.52, 0.52))], seed=0)(image=image, mask=np.zeros((60, 90), np.uint8))
    assert out["image"].shape == (31, 46, 3)
    opencv = cv2.resize(image, (46, 31), interpolation=cv2.INTER_LINEAR)
    assert out["image"][2:-2, 2:-2].std() < 5 and opencv[2:-2, 2:-2].std() > 50


def test_mask_stays_aligned_with_the_image():
    """Image = colour of its mask label: after the rescale, pixels away from label edges still agree."""
    _, mask = _sample()
    colours = {3: 40, 7: 200, 255: 120}
    image = np.repeat(np.vectorize(colours.get)(mask).astype(np.uint8)[:, :, None], 3, axis=2)
    for seed in range(8):
        out_image, out_mask = _rescale(image, mask, seed)
        same = np.ones(out_mask.shape, bool)  # 5x5 neighbourhood of one label: the filter's support at 0.5x
        padded = np.pad(out_mask, 2, mode="edge")
        for dy in range(5):
            for dx in range(5):
                same &= padded[dy:dy + out_mask.shape[0], dx:dx + out_mask.shape[1]] == out_mask
        expected = np.vectorize(colours.get)(out_mask[same])
        assert np.abs(out_image[same][:, 0].astype(int) - expected).max() <= 1


def test_same_seed_same_output_and_the_draws_cover_the_range():
    image, mask = _sample()
    first, again = _rescale(image, mask, 5), _rescale(image, mask, 5)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    long_sides = {_rescale(image[:2, :2].repeat(30, 0).repeat(45, 1), mask, s)[1].shape[1] for s in range(300)}
    assert min(long_sides) >= 45 and max(long_sides) <= 180 and len(long_sides) > 80


def test_rejects_non_uint8():
    with pytest.raises(TypeError, match="uint8"):
        _rescale(np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8), 0)


def test_bad_ratio_range():
    with pytest.raises(ValueError, match="ratio_range"):
        LongSideRescale((2.0, 0.5))
