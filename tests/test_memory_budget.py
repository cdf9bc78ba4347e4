"""The memory a step needs, known before the first step (issue 32.3): the traced estimate grows as it should, a
crop that cannot fit is refused in one line before the model is built, and the estimate covers a measured peak."""
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from engine_helpers import make_cfg, make_train_data
from inference_helpers import run_cli, write_images

from allspark.config.loading import load_config
from allspark.engine import memory_budget
from allspark.engine.loop import train
from allspark.engine.memory_budget import crop_note, size_text, training_step_bytes
from allspark.engine.step import Trainer
from allspark.errors import MemoryBudgetError

ROOT = Path(__file__).resolve().parents[1]


def step_cfg(*extra):
    return load_config("demo", ["method=allspark", "model.num_classes=21", "run_dir=runs/unused", *extra])


def test_estimate_grows_with_crop_batch_and_falls_with_checkpointing():
    small = training_step_bytes(step_cfg("model.crop_size=64", "train.batch_size=2"))
    larger_crop = training_step_bytes(step_cfg("model.crop_size=128", "train.batch_size=2"))
    larger_batch = training_step_bytes(step_cfg("model.crop_size=128", "train.batch_size=4"))
    recomputed = training_step_bytes(step_cfg("model.crop_size=128", "train.batch_size=4",
                                              "train.activation_checkpointing=true"))
    assert small < larger_crop < larger_batch
    assert recomputed < larger_batch


def test_a_crop_that_cannot_fit_is_refused_before_the_model_is_built(tmp_path, monkeypatch, capsys):
    root = make_train_data(tmp_path / "data")
    cfg = make_cfg(root, tmp_path / "run", "allspark", "model.crop_size=2000")
    monkeypatch.setenv(memory_budget.AVAILABLE_ENV, "1G")

    def built(*args, **kwargs):
        raise AssertionError("the model was built for a crop that cannot fit")

    monkeypatch.setattr(Trainer, "__init__", built)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    with pytest.raises(MemoryBudgetError) as refused:
        train(cfg, progress=False)
    message = str(refused.value)
    assert "\n" not in message and "model.crop_size=2000" in message and "train.batch_size=2" in message
    assert "lower model.crop_size or train.batch_size" in message and "(1.0 GB free" in message
    assert refused.value.keys == ("model.crop_size", "train.batch_size")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1_000_000  # nothing near the step's GBs
    assert "is larger than every training image" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # a refused start leaves no run folder


def test_a_step_that_fits_is_logged_with_what_is_free(monkeypatch):
    monkeypatch.setenv(memory_budget.AVAILABLE_ENV, "1T")
    line = memory_budget.check_training(step_cfg("model.crop_size=64"), memory_budget.torch.device("cpu"))
    assert line.startswith("a training step needs ~") and line.endswith("(1000.0 GB free)")


def test_free_memory_is_read_from_the_machine_or_the_override(monkeypatch):
    monkeypatch.delenv(memory_budget.AVAILABLE_ENV, raising=False)
    assert memory_budget.available_bytes(memory_budget.torch.device("cpu")) > 0
    monkeypatch.setenv(memory_budget.AVAILABLE_ENV, "200M")
    assert memory_budget.available_bytes(memory_budget.torch.device("cpu")) == 200 * 10**6
    assert size_text(9_300_000_000) == "9.3 GB" and size_text(12_000_000) == "12 MB"


def test_a_crop_larger_than_every_image_is_named():
    note = crop_note(2000, [(180, 240), (120, 160)])
    assert "model.crop_size=2000 is larger than every training image" in note and "240x180" in note
    assert crop_note(200, [(180, 240)]) is None and crop_note(2000, []) is None


def test_predict_refuses_an_image_that_cannot_fit_before_predicting(checkpoint, tmp_path, monkeypatch):
    image = write_images(tmp_path / "in", [(96, 128)])[0]
    monkeypatch.setenv(memory_budget.AVAILABLE_ENV, "1M")

    def predicted(*args, **kwargs):
        raise AssertionError("predicted although the image cannot fit")

    monkeypatch.setattr("allspark.predict.predictor.predict_probs", predicted)
    assert run_cli(["predict", str(image), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]) == 2
    assert not any((tmp_path / "out").glob("*.png"))


@pytest.mark.slow
def test_the_estimate_covers_a_measured_step():
    """A real step's peak (bench_fit_memory's measurement, in a process of its own) at crop 96, 2 + 2 images."""
    command = [sys.executable, "-m", "benchmarks.speed.bench_fit_memory", "--case", "one batch", "--measure",
               "memory", "--crop", "96", "--batch", "2"]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20), "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env, cwd=ROOT)
    measured = float(done.stdout.split()[-1]) * 2**20  # the step itself: weights and optimizer state not counted
    estimate = training_step_bytes(step_cfg("model.crop_size=96", "train.batch_size=2"))
    assert measured <= estimate <= 4 * measured + 50 * 10**6


def test_eval_refuses_a_whole_image_or_window_that_cannot_fit(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from allspark.engine.evaluate import _check_memory

    write_images(tmp_path, [(300, 400)])
    dataset = SimpleNamespace(root=tmp_path, entries=[("img0.png", None)])
    cfg = step_cfg("model.crop_size=64")
    monkeypatch.setenv(memory_budget.AVAILABLE_ENV, "1M")
    with pytest.raises(MemoryBudgetError, match=r"whole-image evaluation of an image of 400x300 px .*--mode sliding"):
        _check_memory(cfg, dataset, "whole", memory_budget.torch.device("cpu"))
    with pytest.raises(MemoryBudgetError, match=r"window of 64x64 px .*lower eval.crop_size"):
        _check_memory(cfg, dataset, "sliding", memory_budget.torch.device("cpu"))
    monkeypatch.setenv(memory_budget.AVAILABLE_ENV, "1T")
    _check_memory(cfg, dataset, "whole", memory_budget.torch.device("cpu"))


def test_a_bad_free_memory_override_is_one_line(monkeypatch):
    monkeypatch.setenv(memory_budget.AVAILABLE_ENV, "lots")
    with pytest.raises(memory_budget.ConfigError, match="ALLSPARK_MEMORY_AVAILABLE must be a size"):
        memory_budget.available_bytes(memory_budget.torch.device("cpu"))
