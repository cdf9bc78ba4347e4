"""The command layer's traps of issue 20: a closed pipe, help texts, a preset printed resolved, --skip-existing,
output destinations checked before the work, a missing optional dependency named with its extra."""
import os
import subprocess
import sys

import pytest
import yaml

from allspark.config.loading import config_from_dict, load_config
from inference_helpers import run_cli, write_images


def test_presets_into_a_closed_pipe_is_quiet():
    done = subprocess.run(f"{sys.executable} -m allspark presets | head -1", shell=True, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.stdout.strip() and done.stderr == ""


def test_a_preset_prints_resolved(capsys):
    assert run_cli(["presets", "camvid/allspark"]) == 0
    assert config_from_dict(yaml.safe_load(capsys.readouterr().out)) == load_config("camvid/allspark")


@pytest.mark.parametrize("command, words", [("eval", "Evaluate a checkpoint"), ("presets", "resolved"),
                                            ("demo", "synthetic demo data")])
def test_every_command_describes_itself(command, words, capsys):
    assert run_cli([command, "--help"]) == 0
    assert words in " ".join(capsys.readouterr().out.split())  # argparse wraps the description


def test_skip_existing_predicts_only_what_is_missing(checkpoint, tmp_path, capsys):
    images = write_images(tmp_path / "in", [(40, 48), (40, 48)])
    out = tmp_path / "out"
    args = ["predict", *map(str, images), "--checkpoint", str(checkpoint), "--out", str(out), "--threads", "1"]
    assert run_cli(args) == 0
    (out / "img1.png").unlink()  # as if stopped before its outputs were all written
    assert run_cli(args) == 1  # existing outputs are not overwritten
    assert "--skip-existing" in capsys.readouterr().err
    assert run_cli([*args, "--skip-existing"]) == 0
    assert "wrote 1 prediction(s)" in capsys.readouterr().out and (out / "img1.png").is_file()


@pytest.mark.parametrize("command", ["eval", "viz", "predict"])
def test_an_unwritable_destination_fails_before_the_work(command, checkpoint, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setattr("allspark.engine.evaluate.evaluate", lambda *a, **k: pytest.fail("evaluated anyway"))
    monkeypatch.setattr("allspark.predict.predictor.Predictor.__init__", lambda *a, **k: pytest.fail("loaded"))
    monkeypatch.setattr("allspark.viz.checkpoint_figures.load_model", lambda *a, **k: pytest.fail("loaded"))
    image = write_images(tmp_path / "in", [(40, 48)])[0]
    argv = {"eval": ["eval", "--checkpoint", str(checkpoint), "--out", str(blocker / "sub")],
            "viz": ["viz", "memory", "--checkpoint", str(checkpoint), "--out", str(blocker / "sub" / "m.png")],
            "predict": ["predict", str(image), "--checkpoint", str(checkpoint), "--out", str(blocker / "sub")]}
    assert run_cli(argv[command]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"{blocker}" in lines[0], lines


def test_export_without_its_extra_names_it(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    assert run_cli(["export", str(tmp_path / "m.onnx"), "--checkpoint", str(checkpoint)]) == 1
    assert "pip install 'allspark-seg[export]'" in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()
