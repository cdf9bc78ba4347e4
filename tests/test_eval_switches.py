"""The release's evaluation behind `eval` switches: mIoU over all K (absent classes count 0) and
sliding windows whose last one is clipped to a strip; ours stay the defaults."""
import logging

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from allspark.config.loading import config_from_dict
from allspark.data.datasets import ListDataset
from allspark.engine.evaluate import evaluate
from allspark.engine.metrics import ConfusionMatrix
from allspark.errors import ConfigError
from allspark.predict.windows import predict_probs, window_starts, window_stride


def spans(size, window, stride_ratio, placement):
    """(start, end) of the windows along one axis, as `predict_probs` places them."""
    padded = max(size, window) if placement == "aligned" else size
    stride = window_stride(window, stride_ratio, placement)
    return [(s, min(s + window, padded)) for s in window_starts(padded, window, stride, placement)]


def test_window_positions_of_both_placements():
    # window 97, stride 2/3: 64.67 px, rounded to 65 by us, truncated to 64 by the release
    assert spans(200, 97, 2 / 3, "aligned") == [(0, 97), (65, 162), (103, 200)]
    assert spans(200, 97, 2 / 3, "release") == [(0, 97), (64, 161), (128, 200), (192, 200)]  # last: an 8 px strip
    assert spans(50, 97, 2 / 3, "aligned") == [(0, 97)]  # padded to the window
    assert spans(50, 97, 2 / 3, "release") == [(0, 50)]  # clipped, no padding
    assert spans(100, 32, 0.5, "release") == [(0, 32), (16, 48), (32, 64), (48, 80), (64, 96), (80, 100), (96, 100)]


class Constant(torch.nn.Module):
    """Predicts class `label` of `classes` everywhere and records the (h, w) of every input."""

    def __init__(self, classes=2, label=0):
        super().__init__()
        self.classes, self.label, self.calls = classes, label, []

    def forward(self, x):
        self.calls.append(tuple(x.shape[-2:]))
        logits = torch.zeros(x.shape[0], self.classes, *x.shape[-2:])
        logits[:, self.label] = 1.0
        return logits


def test_predict_probs_runs_the_release_strip():
    images = torch.randn(1, 3, 50, 200)
    aligned, release = Constant(), Constant()
    predict_probs(aligned, images, mode="sliding", window=97)
    probs = predict_probs(release, images, mode="sliding", window=97, placement="release")
    assert aligned.calls == [(97, 97)] * 3
    assert release.calls == [(50, 97), (50, 97), (50, 72), (50, 8)]
    assert probs.shape == (1, 2, 50, 200)


def test_release_placement_covers_every_pixel_once_averaged():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 1)  # per pixel: windows and the whole image agree
    images = torch.randn(2, 3, 37, 50)
    release = predict_probs(conv, images, mode="sliding", window=16, stride_ratio=0.5, placement="release")
    torch.testing.assert_close(release, predict_probs(conv, images), rtol=1e-5, atol=1e-6)


def test_strip_too_small_for_the_model_names_the_switch():
    def model(x):
        if x.shape[-1] < 10:
            raise RuntimeError("Kernel size can't be greater than actual input size")
        return torch.zeros(x.shape[0], 2, *x.shape[-2:])

    with pytest.raises(ConfigError, match=r"eval.window_placement 'release' clipped a window to 50x8 px") as err:
        predict_probs(model, torch.zeros(1, 3, 50, 200), mode="sliding", window=97, placement="release")
    assert "\n" not in str(err.value)
    predict_probs(model, torch.zeros(1, 3, 50, 200), mode="sliding", window=97)  # aligned: full windows only


def absent_class_matrix(miou_over):
    cm = ConfusionMatrix(3, miou_over=miou_over)
    cm.update(torch.tensor([[0, 1, 1, 1, 2]]), torch.tensor([[0, 0, 1, 1, 255]]))  # class 2 only on an ignored pixel
    return cm


def test_miou_over_present_and_all():
    present, everything = absent_class_matrix("present"), absent_class_matrix("all")
    assert present.miou() == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert everything.miou() == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    torch.testing.assert_close(present.iou(), everything.iou(), equal_nan=True)
    with pytest.raises(ValueError, match="miou_over"):
        ConfusionMatrix(3, miou_over="some")


@pytest.mark.parametrize("switches, expected", [
    ({}, (0 + 2 / 3) / 2),  # class 2 absent: left out
    ({"miou_over": "all"}, (0 + 2 / 3 + 0) / 3),  # class 2 absent: counts 0
])
def test_evaluate_reads_miou_over(switches, expected):
    """The trainer's validation and `allspark eval` both go through `evaluate`."""
    cfg = config_from_dict({"model": {"num_classes": 3, "crop_size": 32}, "eval": switches})
    mask = torch.full((1, 8, 40), 255, dtype=torch.long)
    mask[..., :10], mask[..., 20:] = 0, 1  # class 0: 10 columns, class 1: 20 columns, class 2: none
    model = Constant(classes=3, label=1)  # IoU 0 for class 0, 20 / 30 for class 1
    loader = [{"image": torch.zeros(1, 3, 8, 40), "mask": mask}]
    assert evaluate(model, loader, cfg, torch.device("cpu"), progress=False).miou() == pytest.approx(expected)


def test_evaluate_names_the_skipped_validation_samples_in_one_warning(tmp_path, caplog):
    """The trainer's validation: samples data.skip_bad_samples left out are one line, not one each."""
    (tmp_path / "images").mkdir()
    Image.new("RGB", (16, 8)).save(tmp_path / "images/a.png")
    Image.new("L", (16, 8)).save(tmp_path / "a_mask.png")
    (tmp_path / "val.txt").write_text("images/a.png a_mask.png\n" + "".join(f"images/{k}.png a_mask.png\n"
                                                                          for k in range(4)))
    cfg = config_from_dict({"model": {"num_classes": 2, "crop_size": 32}})
    loader = DataLoader(ListDataset(tmp_path, tmp_path / "val.txt", "val", 2, skip_bad=True), batch_size=1)
    with caplog.at_level(logging.WARNING):
        confusion = evaluate(Constant(), loader, cfg, torch.device("cpu"), progress=False)
    assert int(confusion.matrix.sum()) == 16 * 8  # the good image alone
    assert [record.getMessage() for record in caplog.records] == [
        f"4 validation image(s) skipped (data.skip_bad_samples), not in the mIoU: {tmp_path / 'images/0.png'}: "
        f"missing file (listed as image); {tmp_path / 'images/1.png'}: missing file (listed as image); "
        f"{tmp_path / 'images/2.png'}: missing file (listed as image); and 1 more"]


def test_evaluate_uses_the_release_window_placement():
    cfg = config_from_dict({"model": {"num_classes": 2, "crop_size": 32},
                            "eval": {"mode": "sliding", "crop_size": 32, "stride_ratio": 0.75,
                                     "window_placement": "release"}})
    model = Constant()
    loader = [{"image": torch.zeros(1, 3, 24, 80), "mask": torch.zeros(1, 24, 80, dtype=torch.long)}]
    evaluate(model, loader, cfg, torch.device("cpu"), progress=False)
    assert model.calls == [(24, 32), (24, 32), (24, 32), (24, 8)]  # columns 0, 24, 48, 72: the last an 8 px strip


def test_eval_switches_are_validated():
    with pytest.raises(ConfigError, match="eval.window_placement"):
        config_from_dict({"eval": {"window_placement": "clipped"}})
    with pytest.raises(ConfigError, match="eval.miou_over"):
        config_from_dict({"eval": {"miou_over": "every"}})
