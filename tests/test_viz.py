"""`allspark viz ...` and the suggest contact sheet: each figure is a PNG of exactly the requested size that draws
the numbers it was given where a reader looks for them (cells, bars, panels, pixels)."""
import argparse
import json

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from allspark.commands.viz import parse_size
from allspark.errors import InputError
from allspark.models.weights import load_model
from allspark.runs.metrics import read_metrics
from allspark.viz import confusion, curves, features, grouping, memory
from allspark.viz.contact_sheet import (CAPTION, CELL, COLUMN_W, COLUMNS, GAP, HEADER, ROW_GAP, TRIPLE_W,
                                       contact_sheet, uncertainty_image)
from allspark.viz.figure import save_figure
from allspark.viz.grouping import grouping_counts
from allspark.viz.memory import memory_maps
from inference_helpers import PALETTE, run_cli, tiny_checkpoint, write_images


@pytest.fixture
def drawn(monkeypatch):
    """The figure each viz module saves, by module name ("confusion", "curves", ...); the PNG is still written."""
    figures = {}
    for module in (confusion, curves, features, grouping, memory):
        def save(fig, out, name=module.__name__.rsplit(".", 1)[1]):
            figures[name] = fig
            return save_figure(fig, out)

        monkeypatch.setattr(module, "save_figure", save)
    return figures


def assert_png(path, size):
    image = Image.open(path)
    assert image.format == "PNG" and image.size == size
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 10  # something was drawn, not a blank canvas


def pixel_at(png, ax, x, y) -> np.ndarray:
    """RGB of the saved PNG at data point (x, y) of `ax` (display y counts from the bottom, PNG rows from the top)."""
    image = np.asarray(Image.open(png).convert("RGB")).astype(int)
    col, row = ax.transData.transform((x, y))
    return image[int(image.shape[0] - row), int(col)]


def titles(axes):
    return [ax.get_title() for ax in axes]


def suptitle(fig) -> str:
    return fig._suptitle.get_text()  # Figure.get_suptitle needs matplotlib 3.8; pyproject allows 3.7


def test_confusion_cells_are_the_row_normalised_counts(tmp_path, drawn):
    result = {"iou": [0.8, 0.25, None], "miou": 0.525, "class_names": ["sky", "road", "car"], "mode": "sliding",
              "confusion": [[80, 10, 10], [50, 5, 45], [0, 0, 0]]}  # no "car" in the ground truth
    out = confusion.plot_confusion(result, tmp_path / "c.png", size=(900, 450))
    matrix, bars = drawn["confusion"].axes[:2]
    by_hand = np.array([[0.8, 0.1, 0.1], [0.5, 0.05, 0.45], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(np.asarray(matrix.images[0].get_array()), by_hand)
    numbers = {text.get_position(): (text.get_text(), text.get_color()) for text in matrix.texts}
    assert numbers == {(col, row): (f"{value:.2f}", "white" if value > 0.5 else "black")
                       for (row, col), value in np.ndenumerate(by_hand)}
    assert numbers[(0, 0)] == ("0.80", "white") and numbers[(0, 1)] == ("0.50", "black")  # white above one half
    blues = matplotlib.colormaps["Blues"]
    for (row, col), value in np.ndenumerate(by_hand):  # a corner of each cell, clear of its number
        expected = np.round(255 * np.asarray(blues(value)[:3]))
        assert np.abs(pixel_at(out, matrix, col - 0.35, row - 0.35) - expected).max() <= 2, (row, col)
    assert [label.get_text() for label in matrix.get_yticklabels()] == ["sky", "road", "car"]
    assert [p.get_width() for p in bars.patches] == [80.0, 25.0, 0.0]  # a class without IoU draws no bar
    assert [p.get_y() + p.get_height() / 2 for p in bars.patches] == [0, 1, 2]
    assert [label.get_text() for label in bars.get_yticklabels()] == ["sky", "road", "car"]
    for ax in (matrix, bars):  # both read top-down: the first class on top
        assert ax.transData.transform((0, 0))[1] > ax.transData.transform((0, 2))[1]
    assert bars.get_legend().get_texts()[0].get_text() == "mIoU 52.50 %" and "sliding" in bars.get_title()


def test_curves_draw_each_series_in_its_panel(tmp_path, drawn):
    train = [{"split": "train", "iter": i, "loss": 3.0 - i, "loss_l": 2.0 - i / 2, "loss_u": 1.0, "lr": 0.1 / (i + 1)}
             for i in range(3)]
    others = [{"split": "train", "loss": 9.0},  # no iteration: not drawn
              {"split": "val", "iter": 2, "miou": 0.25, "loss": 7.0}]  # a validation loss is no training loss
    curves.plot_curves(train + others, tmp_path / "c.png", title="run x")
    fig = drawn["curves"]
    loss, lr, val = fig.axes
    assert titles(fig.axes) == ["training loss", "learning rate", "validation mIoU (%)"]
    assert suptitle(fig) == "run x"
    series = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in loss.lines}
    assert series == {"loss": ([0, 1, 2], [3.0, 2.0, 1.0]), "loss_l": ([0, 1, 2], [2.0, 1.5, 1.0]),
                      "loss_u": ([0, 1, 2], [1.0, 1.0, 1.0])}
    assert list(lr.lines[0].get_ydata()) == [0.1, 0.05, 0.1 / 3] and lr.get_legend() is None
    assert list(val.lines[0].get_xdata()) == [2] and list(val.lines[0].get_ydata()) == [25.0]
    curves.plot_curves(others[1:], tmp_path / "v.png")  # validation only: one panel
    assert titles(drawn["curves"].axes) == ["validation mIoU (%)"]
    with pytest.raises(InputError, match="no train or val records"):
        curves.plot_curves(others[:1], tmp_path / "n.png")


def test_grouping_bars_are_channels_per_image(tmp_path, drawn):
    out = grouping.plot_grouping(np.array([6, 0, 3]), 3, ["sky", "road", "car"], tmp_path / "g.png", size=(600, 400))
    ax = drawn["grouping"].axes[0]
    assert [p.get_height() for p in ax.patches] == [2.0, 0.0, 1.0]
    assert [label.get_text() for label in ax.get_xticklabels()] == ["sky", "road", "car"]
    assert "over 3 unlabeled image(s)" in ax.get_title()
    image = np.asarray(Image.open(out).convert("RGB")).astype(int)
    green = np.all(np.abs(image - [44, 160, 44]) <= 2, axis=-1)  # tab:green
    heights = [green[:, int(ax.transData.transform((i, 0))[0])].sum() for i in range(3)]
    assert heights[1] == 0 and heights[2] > 50 and abs(heights[0] - 2 * heights[2]) <= 2


def test_feature_and_memory_panels_show_the_chosen_channels(tmp_path, drawn):
    image = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    before, after = torch.randn(4, 2, 2), torch.randn(4, 2, 2)
    features.plot_features(image, before, after, [1, 3], tmp_path / "f.png", size=(600, 400))
    axes = np.array(drawn["features"].axes).reshape(2, 3)
    np.testing.assert_array_equal(axes[0, 0].images[0].get_array(), image)
    assert not axes[1, 0].get_visible()
    for col, channel in enumerate([1, 3], start=1):
        np.testing.assert_array_equal(axes[0, col].images[0].get_array(), before[channel].numpy())
        np.testing.assert_array_equal(axes[1, col].images[0].get_array(), after[channel].numpy())
    assert titles(axes[:, 1:].flat) == ["ch 1 before", "ch 3 before", "ch 1 after", "ch 3 after"]
    with pytest.raises(InputError, match=r"0\.\.3; got \[4\]"):
        features.plot_features(image, before, after, [0, 4], tmp_path / "x.png")
    maps = torch.randn(3, 4, 2, 2)
    memory.plot_memory(maps, [0, 2], ["sky", "road", "car"], tmp_path / "m.png", size=(400, 600))
    axes = np.array(drawn["memory"].axes).reshape(3, 2)
    for (k, col), ax in np.ndenumerate(axes):
        np.testing.assert_array_equal(ax.images[0].get_array(), maps[k, [0, 2][col]].numpy())
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["sky", "road", "car"]
    assert titles(axes[0]) == ["ch 0", "ch 2"] and titles(axes[1]) == ["", ""]


def _sheet_inputs():
    """Four suggestions: plain-colour images (one 40x20), masks in halves, uncertainty maps of known levels."""
    colours = [(250, 200, 0), (0, 120, 250), (130, 0, 130), (90, 90, 90)]
    images = [np.full((32, 32, 3), c, np.uint8) for c in colours[:2]]
    images += [np.full((20, 40, 3), colours[2], np.uint8), np.full((32, 32, 3), colours[3], np.uint8)]
    halves = np.ones((32, 32), np.int64)
    halves[:, 16:] = 2
    masks = [halves, np.zeros((32, 32), np.int64), np.ones((20, 40), np.int64), np.full((32, 32), 255)]
    doubt = [np.zeros((32, 32)), np.ones((32, 32)), np.full((20, 40), 0.5), np.zeros((32, 32))]
    return colours, list(zip(images, masks, doubt))


def test_contact_sheet_puts_image_mask_and_uncertainty_side_by_side(tmp_path):
    colours, triples = _sheet_inputs()
    captions = ["#1 a.png\nscore 0.90", "#2 b.png\nscore 0.80", "#3 c.png\nscore 0.50", "#4 d.png\nscore 0.40"]
    sheet = np.asarray(contact_sheet(triples, captions, PALETTE, ["c0", "c1", "c2"])).astype(int)

    def at(number, place, x, y):  # pixel (x, y) of suggestion `number`'s picture `place` (image, mask, doubt)
        row_top = HEADER + (0 if number < COLUMNS else CELL + GAP + CAPTION + ROW_GAP)
        return list(sheet[row_top + y, (number % COLUMNS) * COLUMN_W + place * (CELL + GAP) + x])

    for number in range(4):
        assert at(number, 0, CELL // 2, 30) == list(colours[number])
    assert at(0, 1, 40, 80) == list(PALETTE[1]) and at(0, 1, 120, 80) == list(PALETTE[2])
    assert at(1, 1, 80, 80) == list(PALETTE[0]) and at(3, 1, 80, 80) == [0, 0, 0]  # 255 (ignore) is black
    assert at(0, 2, 80, 80) == list(uncertainty_image(np.zeros((1, 1)))[0, 0])  # certain: dark
    assert at(1, 2, 80, 80) == list(uncertainty_image(np.ones((1, 1)))[0, 0])  # uniform: bright
    assert sum(at(1, 2, 80, 80)) > sum(at(2, 2, 80, 40)) > sum(at(0, 2, 80, 80))
    assert at(2, 0, 80, 120) == [255, 255, 255]  # 40x20: half as high


def _blocks(rows: np.ndarray, gap: int) -> list[tuple[int, int]]:
    """(first, last) of each run of `rows` whose steps are at most `gap`."""
    cuts = np.flatnonzero(np.diff(rows) > gap)
    return [(int(rows[a]), int(rows[b])) for a, b in zip(np.r_[0, cuts + 1], np.r_[cuts, len(rows) - 1])]


def test_each_caption_sits_under_its_own_pictures_in_readable_type():
    green = np.array([10, 200, 30], np.uint8)
    wide = (np.full((24, 32, 3), green), np.zeros((24, 32), np.int64), np.full((24, 32), 0.5))  # 4:3
    sheet = np.asarray(contact_sheet([wide] * 6, ["#1 a.png\nscore 0.90"] * 6, PALETTE, ["c0", "c1", "c2"]))
    column = sheet[:, :TRIPLE_W]
    pictures = _blocks(np.flatnonzero((column == green).all(axis=-1).any(axis=1)), 1)  # the images' rows
    dark = np.flatnonzero((column.max(axis=-1) < 60).any(axis=1))
    assert len(pictures) == 3
    for number, ((_, bottom), (end, _)) in enumerate(zip(pictures, pictures[1:])):  # a row and the next
        caption = dark[(dark > bottom) & (dark < end)]
        assert caption.size, number  # under its own pictures ...
        assert caption.min() - bottom < end - caption.max(), number  # ... nearer them than the next row
        assert caption.max() - caption.min() >= 2 * 10  # two lines of type at least 10 px high


def test_curves_and_confusion_commands(tmp_path, drawn):
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"split": "train", "iter": i, "epoch": i // 5, "loss": 2 / (i + 1), "loss_l": 1 / (i + 1),
              "loss_u": 1 / (i + 1), "lr": 0.01 * (1 - i / 20) ** 0.9} for i in range(20)]
    lines += [{"split": "val", "iter": i, "epoch": i // 5, "miou": 0.1 * i / 5, "iou": [0.1, 0.2]} for i in (5, 10, 15)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert run_cli(["viz", "curves", str(run), "--out", str(tmp_path / "curves.png"), "--size", "640x360"]) == 0
    assert_png(tmp_path / "curves.png", (640, 360))
    assert list(drawn["curves"].axes[2].lines[0].get_ydata()) == pytest.approx([10.0, 20.0, 30.0])
    result = {"mode": "whole", "miou": 0.5, "iou": [0.8, 0.4, 0.3], "class_names": ["sky", "road", "car"],
              "confusion": [[80, 10, 10], [5, 40, 55], [0, 30, 30]]}
    (run / "eval.json").write_text(json.dumps(result))
    argv = ["viz", "confusion", str(run / "eval.json"), "--out", str(tmp_path / "c.png"), "--size", "901x433"]
    assert run_cli(argv) == 0
    assert_png(tmp_path / "c.png", (901, 433))
    assert np.asarray(drawn["confusion"].axes[0].images[0].get_array())[2].tolist() == [0.0, 0.5, 0.5]


def test_bad_files_are_reported_with_location(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"split": "train", "iter": 1, "loss": 1.0}\n{broken\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_metrics(tmp_path)
    (tmp_path / "eval.json").write_text(json.dumps({"iou": [0.5, 0.5], "confusion": [[1, 2, 3]]}))
    assert run_cli(["viz", "confusion", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 1
    assert "eval.json" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    with pytest.raises(argparse.ArgumentTypeError, match="WIDTHxHEIGHT"):
        parse_size("640*480")


def test_features_memory_and_grouping_commands(checkpoint, tmp_path, drawn):
    images = write_images(tmp_path / "in", [(64, 64), (48, 64)])
    out = tmp_path / "features.png"
    argv = ["viz", "features", str(images[0]), "--checkpoint", str(checkpoint), "--channels", "0,7,100",
            "--out", str(out), "--size", "800x300"]
    assert run_cli(argv) == 0
    assert_png(out, (800, 300))
    fig = drawn["features"]
    assert suptitle(fig) == "img0.png: c4 before / after AllSpark"
    assert titles(fig.axes[1:4]) == ["ch 0 before", "ch 7 before", "ch 100 before"]
    assert run_cli(["viz", "memory", "--checkpoint", str(checkpoint), "--num-channels", "4",
                    "--out", str(tmp_path / "memory.png"), "--size", "500x420"]) == 0
    assert_png(tmp_path / "memory.png", (500, 420))
    rows = np.array(drawn["memory"].axes).reshape(3, 4)[:, 0]
    assert [ax.get_ylabel() for ax in rows] == ["c0", "c1", "c2"]  # the names of the checkpoint's classes.txt
    assert run_cli(["viz", "grouping", str(tmp_path / "in"), "--checkpoint", str(checkpoint),
                    "--out", str(tmp_path / "grouping.png"), "--size", "700x350"]) == 0
    assert_png(tmp_path / "grouping.png", (700, 350))
    bars = drawn["grouping"].axes[0]
    channels = load_model(checkpoint)[0].encoder.channels[-1]
    assert sum(p.get_height() for p in bars.patches) == channels and "over 2 unlabeled" in bars.get_title()


def test_grouping_assigns_every_channel_once_and_memory_keeps_its_shape(checkpoint):
    model, cfg = load_model(checkpoint)
    images = [torch.randn(3, 64, 64), torch.randn(3, 64, 96)]
    counts = grouping_counts(model, images, cfg.model.num_classes)
    channels = model.encoder.channels[-1]
    assert counts.shape == (3,) and counts.sum() == 2 * channels
    np.testing.assert_array_equal(counts, sum(grouping_counts(model, [image], 3) for image in images))
    maps = memory_maps(model)
    assert maps.shape == (3, channels, 2, 2)  # crop 64 -> a 2x2 token grid
    torch.testing.assert_close(maps.flatten(2), model.allspark.memory.queue)


def test_models_without_allspark_are_refused_clearly(tmp_path, capsys):
    baseline = tiny_checkpoint(tmp_path / "baseline", ablation="none")
    assert run_cli(["viz", "memory", "--checkpoint", str(baseline), "--out", str(tmp_path / "m.png")]) == 1
    assert "no AllSpark module" in capsys.readouterr().err
