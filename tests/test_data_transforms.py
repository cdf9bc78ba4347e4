"""Augmentation keeps image and mask aligned, marks padding, and normalises with ImageNet statistics."""
import numpy as np
import pytest
import torch

from allspark.data.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize_image
from allspark.data.transforms import TrainTransform

BLOCK = 12


def _pattern(height=72, width=96):
    """Blocks of 12x12 pixels: mask = block index, image = a colour unique to that index."""
    y, x = np.mgrid[0:height, 0:width]
    mask = ((y // BLOCK) * (width // BLOCK) + x // BLOCK).astype(np.uint8)
    colours = np.stack([np.arange(256) * 5 % 256, 255 - np.arange(256) * 3 % 256, np.arange(256) * 37 % 256], 1)
    return colours[mask].astype(np.uint8), mask, colours


def _interior(mask):
    """Pixels whose 3x3 neighbourhood has one mask value (away from block edges, crop borders and padding)."""
    padded = np.pad(mask, 1, constant_values=255)  # crop borders: neighbours unknown
    same = np.ones(mask.shape, bool)
    for dy in range(3):
        for dx in range(3):
            same &= padded[dy:dy + mask.shape[0], dx:dx + mask.shape[1]] == mask
    return same & (mask != 255)


@pytest.mark.parametrize("seed", range(12))
def test_geometric_ops_keep_image_and_mask_aligned(seed):
    image, mask, colours = _pattern()
    out_image, out_mask = TrainTransform(64, colour=False, seed=seed)(image, mask)
    assert out_image.shape == (64, 64, 3) and out_mask.shape == (64, 64)
    inside = _interior(out_mask)
    assert inside.sum() > 100
    error = np.abs(out_image[inside].astype(int) - colours[out_mask[inside]]).max()
    assert error <= 2, f"image and mask disagree by {error} grey levels inside blocks"
    assert set(np.unique(out_mask)) <= set(np.unique(mask)) | {255}  # nearest neighbour: no new labels


def test_flip_and_rescale_actually_happen():
    image, mask, _ = _pattern()
    flipped, sizes = 0, set()
    for seed in range(16):
        _, out_mask = TrainTransform(64, colour=False, seed=seed)(image, mask)
        flipped += int(np.any(np.diff(out_mask[0][out_mask[0] != 255].astype(int)) < 0))
        sizes.add(int((out_mask[0] == out_mask[0][0]).sum()))  # width of the first block: varies with the scale
    assert 0 < flipped < 16
    assert len(sizes) > 3


def test_padding_is_image_zero_mask_ignore_and_invalid():
    image = np.full((16, 20, 3), 200, np.uint8)  # scaled by at most 2: always smaller than the crop
    for seed in range(8):
        out_image, out_mask = TrainTransform(64, colour=False, seed=seed)(image)
        valid = out_mask != 255
        assert 0 < valid.sum() <= 40 * 32
        np.testing.assert_array_equal(out_image.sum(-1) == 0, ~valid)
        assert (out_image[valid] == 200).all()


def test_colour_ops_change_only_the_image():
    image, mask, _ = _pattern()
    changed = 0
    for seed in range(10):
        plain_image, plain_mask = TrainTransform(64, colour=False, seed=seed)(image, mask)
        colour_image, colour_mask = TrainTransform(64, colour=True, seed=seed)(image, mask)
        np.testing.assert_array_equal(plain_mask, colour_mask)
        changed += int(not np.array_equal(plain_image, colour_image))
    assert changed >= 5


def test_normalize_image():
    image = np.zeros((5, 7, 3), np.uint8)
    image[2, 3] = (255, 128, 0)
    tensor = normalize_image(image)
    assert tensor.shape == (3, 5, 7) and tensor.dtype == torch.float32
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 128, 0), IMAGENET_MEAN, IMAGENET_STD)]
    torch.testing.assert_close(tensor[:, 2, 3], torch.tensor(expected))
    torch.testing.assert_close(tensor[:, 0, 0], -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD))


def test_reseed_restarts_the_stream_with_one_seed_per_step():
    image, mask, _ = _pattern()
    transform = TrainTransform(64, colour=True)
    outputs = []
    for _ in range(2):
        transform.reseed(3)
        outputs.append(transform(image, mask))
    assert all(np.array_equal(a, b) for a, b in zip(*outputs))  # a sample depends on its seed alone
    transform.reseed(3)
    first_draws = [step.py_random.random() for step in transform.compose.transforms]
    assert len(set(first_draws)) == len(first_draws)  # flip, jitter, grey and blur do not fire in lockstep
