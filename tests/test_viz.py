"""`allspark viz ...`: every plot writes a non-empty PNG of exactly the requested size."""
import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from allspark.commands.viz import parse_size
from allspark.models.weights import load_model
from allspark.runs.metrics import read_metrics
from allspark.viz.grouping import grouping_counts
from allspark.viz.memory import memory_maps
from inference_helpers import run_cli, tiny_checkpoint, write_images


def assert_png(path, size):
    image = Image.open(path)
    assert image.format == "PNG" and image.size == size
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 10  # something was drawn, not a blank canvas


def test_curves_and_confusion(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"split": "train", "iter": i, "epoch": i // 5, "loss": 2 / (i + 1), "loss_l": 1 / (i + 1),
              "loss_u": 1 / (i + 1), "lr": 0.01 * (1 - i / 20) ** 0.9} for i in range(20)]
    lines += [{"split": "val", "iter": i, "epoch": i // 5, "miou": 0.1 * i / 5, "iou": [0.1, 0.2]} for i in (5, 10, 15)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert run_cli(["viz", "curves", str(run), "--out", str(tmp_path / "curves.png"), "--size", "640x360"]) == 0
    assert_png(tmp_path / "curves.png", (640, 360))
    result = {"mode": "whole", "miou": 0.5, "iou": [0.8, 0.4, 0.3], "class_names": ["sky", "road", "car"],
              "confusion": [[80, 10, 10], [5, 40, 55], [0, 30, 30]]}
    (run / "eval.json").write_text(json.dumps(result))
    assert run_cli(["viz", "confusion", str(run / "eval.json"), "--out", str(tmp_path / "c.png"), "--size", "901x433"]) == 0
    assert_png(tmp_path / "c.png", (901, 433))


def test_bad_files_are_reported_with_location(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"split": "train", "iter": 1, "loss": 1.0}\n{broken\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_metrics(tmp_path)
    (tmp_path / "eval.json").write_text(json.dumps({"iou": [0.5, 0.5], "confusion": [[1, 2, 3]]}))
    assert run_cli(["viz", "confusion", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 1
    assert "eval.json" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    with pytest.raises(argparse.ArgumentTypeError, match="WIDTHxHEIGHT"):
        parse_size("640*480")


def test_features_memory_and_grouping_plots(checkpoint, tmp_path):
    images = write_images(tmp_path / "in", [(64, 64), (48, 64)])
    out = tmp_path / "features.png"
    argv = ["viz", "features", str(images[0]), "--checkpoint", str(checkpoint), "--channels", "0,7,100",
            "--out", str(out), "--size", "800x300"]
    assert run_cli(argv) == 0
    assert_png(out, (800, 300))
    assert run_cli(["viz", "memory", "--checkpoint", str(checkpoint), "--num-channels", "4",
                    "--out", str(tmp_path / "memory.png"), "--size", "500x420"]) == 0
    assert_png(tmp_path / "memory.png", (500, 420))
    assert run_cli(["viz", "grouping", str(tmp_path / "in"), "--checkpoint", str(checkpoint),
                    "--out", str(tmp_path / "grouping.png"), "--size", "700x350"]) == 0
    assert_png(tmp_path / "grouping.png", (700, 350))


def test_grouping_assigns_every_channel_once_and_memory_keeps_its_shape(checkpoint):
    model, cfg = load_model(checkpoint)
    images = [torch.randn(3, 64, 64), torch.randn(3, 64, 96)]
    counts = grouping_counts(model, images, cfg.model.num_classes)
    channels = model.encoder.channels[-1]
    assert counts.shape == (3,) and counts.sum() == 2 * channels
    maps = memory_maps(model)
    assert maps.shape == (3, channels, 2, 2)  # crop 64 -> a 2x2 token grid
    torch.testing.assert_close(maps.flatten(2), model.allspark.memory.queue)


def test_models_without_allspark_are_refused_clearly(tmp_path, capsys):
    baseline = tiny_checkpoint(tmp_path / "baseline", ablation="none")
    assert run_cli(["viz", "memory", "--checkpoint", str(baseline), "--out", str(tmp_path / "m.png")]) == 1
    assert "no AllSpark module" in capsys.readouterr().err


def test_figures_draw_miou_in_percent_from_the_files_fractions(tmp_path, monkeypatch):
    from allspark.viz import confusion, curves

    drawn = {}
    for module in (confusion, curves):
        monkeypatch.setattr(module, "save_figure", lambda fig, out, name=module.__name__: drawn.setdefault(name, fig))
    confusion.plot_confusion({"iou": [0.25, 0.5], "miou": 0.375, "confusion": [[3, 1], [0, 2]]}, tmp_path / "c.png")
    bars = drawn["allspark.viz.confusion"].axes[1]  # matrix, bars, then the colour bar
    assert bars.get_xlabel() == "IoU (%)" and [p.get_width() for p in bars.patches] == [25.0, 50.0]
    assert bars.get_legend().get_texts()[0].get_text() == "mIoU 37.50 %"
    curves.plot_curves([{"split": "val", "iter": 5, "miou": 0.4}, {"split": "val", "iter": 10, "miou": 0.5}],
                       tmp_path / "m.png")
    panel = drawn["allspark.viz.curves"].axes[0]
    assert panel.get_title() == "validation mIoU (%)" and list(panel.lines[0].get_ydata()) == [40.0, 50.0]
