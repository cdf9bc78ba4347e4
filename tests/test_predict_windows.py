"""predict_probs: whole / sliding / centre modes and test-time augmentation, on toy models."""
import pytest
import torch
import torch.nn.functional as F

from allspark.predict.windows import center_crop_box, predict_probs, window_starts


class PixelModel(torch.nn.Module):
    """Per-pixel 1x1 conv: translation-invariant, so windows and the whole image agree exactly."""

    def __init__(self, classes=4):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, classes, 1)

    def forward(self, x):
        return self.conv(x)


def context_model(x):
    """Depends on the whole input (its mean), so a window's output differs from the full image's."""
    return torch.cat([x[:, :1], x[:, 1:2] + x.mean(dim=(1, 2, 3), keepdim=True), x[:, 2:] * 2], dim=1)


def test_sliding_with_window_equal_to_image_equals_whole():
    images = torch.randn(2, 3, 20, 28)
    sliding = predict_probs(context_model, images, mode="sliding", window=(20, 28))
    torch.testing.assert_close(sliding, predict_probs(context_model, images), rtol=0, atol=0)


def test_sliding_with_window_larger_than_image_equals_whole_for_pixelwise_model():
    model = PixelModel()
    images = torch.randn(2, 3, 20, 28)
    torch.testing.assert_close(predict_probs(model, images, mode="sliding", window=40), predict_probs(model, images))


def test_sliding_pixelwise_model_equals_whole_and_probabilities_sum_to_one():
    model = PixelModel()
    images = torch.randn(2, 3, 37, 50)
    sliding = predict_probs(model, images, mode="sliding", window=16, stride_ratio=0.5)
    torch.testing.assert_close(sliding, predict_probs(model, images), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sliding.sum(1), torch.ones(2, 37, 50))
    assert sliding.dtype == torch.float32


def test_windows_cover_every_pixel_last_aligned_to_border():
    for size, window, stride in [(100, 32, 21), (64, 32, 21), (33, 32, 21), (32, 32, 21), (10, 32, 21), (97, 30, 7)]:
        starts = window_starts(size, window, stride)
        covered = torch.zeros(max(size, window), dtype=torch.bool)
        for s in starts:
            covered[s:s + window] = True
        assert covered[:size].all(), (size, window, stride)
        assert starts[-1] == max(size - window, 0)
        assert starts == sorted(set(starts))


def test_sliding_counts_average_overlaps():
    """A model that outputs one class score per window position reveals the averaging."""
    calls = []

    def model(x):
        calls.append(x.shape[-2:])
        logits = torch.zeros(x.shape[0], 2, *x.shape[-2:])
        logits[:, 0] = 100.0 if len(calls) % 2 else -100.0  # windows alternate between classes
        return logits

    probs = predict_probs(model, torch.zeros(1, 3, 8, 12), mode="sliding", window=8, stride_ratio=0.5)
    # windows start at x = 0, 4 (class 0, class 1); column 4..7 is covered by both -> 0.5
    assert [tuple(c) for c in calls] == [(8, 8), (8, 8)]
    assert probs[0, 0, :, :4].min() > 0.99
    torch.testing.assert_close(probs[0, 0, :, 4:8], torch.full((8, 4), 0.5))
    assert probs[0, 0, :, 8:].max() < 0.01


def test_flip_tta_on_flip_equivariant_model():
    model = PixelModel()
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(predict_probs(model, images, flip=True), predict_probs(model, images))


def test_flip_tta_averages_flipped_prediction():
    def left_biased(x):  # class 0 on the left half, class 1 on the right: not flip-equivariant
        logits = torch.zeros(x.shape[0], 2, *x.shape[-2:])
        logits[:, 0, :, : x.shape[-1] // 2] = 5.0
        return logits

    images = torch.zeros(1, 3, 4, 8)
    plain = predict_probs(left_biased, images)
    flipped = predict_probs(left_biased, images, flip=True)
    torch.testing.assert_close(flipped, (plain + plain.flip(-1)) / 2)


def test_multiscale_on_constant_image_and_resizing_back():
    model = PixelModel()
    images = torch.ones(1, 3, 12, 18) * torch.tensor([0.3, -1.0, 2.0]).view(1, 3, 1, 1)
    multi = predict_probs(model, images, scales=(0.5, 1.0, 1.5))
    assert multi.shape == (1, 4, 12, 18)
    torch.testing.assert_close(multi, predict_probs(model, images))
    # scale 0.5 alone equals predicting on the downsampled image and resizing the probabilities back
    small = F.interpolate(images, size=(6, 9), mode="bilinear", align_corners=False)
    expected = F.interpolate(torch.softmax(model(small), 1), size=(12, 18), mode="bilinear", align_corners=False)
    torch.testing.assert_close(predict_probs(model, images, scales=(0.5,)), expected)


def test_center_crop_returns_the_central_window():
    model = PixelModel()
    images = torch.randn(1, 3, 20, 30)
    top, left, bottom, right = center_crop_box(20, 30, 16)
    assert (top, left, bottom, right) == (2, 7, 18, 23)
    probs = predict_probs(model, images, mode="center", window=16)
    torch.testing.assert_close(probs, predict_probs(model, images[:, :, top:bottom, left:right]))
    assert center_crop_box(10, 30, 16) == (0, 7, 10, 23)


def test_per_image_results_do_not_depend_on_batch():
    model = PixelModel()
    images = torch.randn(3, 3, 24, 24)
    batch = predict_probs(model, images, mode="sliding", window=16, flip=True, scales=(0.75, 1.0))
    single = torch.cat([predict_probs(model, images[i:i + 1], mode="sliding", window=16, flip=True,
                                      scales=(0.75, 1.0)) for i in range(3)])
    torch.testing.assert_close(batch, single)


@pytest.mark.parametrize("kwargs", [dict(mode="tiles"), dict(mode="sliding"), dict(stride_ratio=0.0), dict(scales=())])
def test_bad_arguments_are_named(kwargs):
    with pytest.raises(ValueError):
        predict_probs(PixelModel(), torch.zeros(1, 3, 8, 8), **kwargs)
