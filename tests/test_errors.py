"""Expected failures of every command end in one line `allspark CMD: error: ...` and a non-zero exit
(the same line in train.log for training); --debug or ALLSPARK_DEBUG=1 gives the traceback instead."""
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from allspark.cli import main
from allspark.config.loading import load_config
from allspark.data.splits import make_split
from allspark.data.synthetic import generate_synthetic, write_bad_samples
from allspark.errors import CheckpointError, ConfigError, DataError

from inference_helpers import run_cli


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Synthetic folder dataset, 3 classes, 64 px, with one list per kind of bad sample under bad/ (BAD_SAMPLES)."""
    root = generate_synthetic(tmp_path_factory.mktemp("data"), num_train=6, num_val=2, size=64, num_classes=3)
    make_split(root / "train.txt", root / "splits", count=2, seed=0)
    write_bad_samples(root)
    return root


def train_argv(root, run_dir, *extra):
    return ["train", "demo", f"data.root={root}", f"run_dir={run_dir}", "method=sup",
            "model.num_classes=3", "model.crop_size=64", "train.batch_size=2", "train.epochs=1", "train.max_iters=1",
            "data.labeled_list=splits/labeled.txt", "data.workers=1", "--no-progress", *extra]


def one_error_line(capsys, command):
    """The stderr of a failed command: exactly one `allspark CMD: error:` line and no traceback."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith(f"allspark {command}: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.mark.parametrize("name, culprit", [
    ("truncated", "bad/truncated.jpg: unreadable or truncated image"),
    ("value", "bad/value7.png: mask values 7 outside [0, 3)"),
    ("rgb", "bad/rgb.png: mask has mode RGB"),
    ("size", "bad/short.png: mask size 64x40 differs"),
    ("missing", "images/absent.jpg: missing file"),
])
def test_bad_sample_in_a_loader_worker_is_one_line_in_stderr_and_train_log(root, tmp_path, capsys, name, culprit):
    assert run_cli(train_argv(root, tmp_path / "run", f"data.labeled_list=bad/{name}.txt")) == 1
    line = one_error_line(capsys, "train")
    assert culprit in line
    assert line in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.parametrize("override, code, expected", [
    ("data.labeled_list=bad/empty.txt", 1, "bad/empty.txt: list file is empty"),
    ("data.labeled_list=bad/three.txt", 1, "bad/three.txt: line 1: expected 'image_path mask_path', found 3 fields"),
    ("data.labeled_list=absent.txt", 2, "key 'data.labeled_list': list file"),
    ("data.workers=-1", 2, "command line: key 'data.workers' must be zero or positive; got -1"),
    ("train.lr_multi=-1", 2, "command line: key 'train.lr_multi' must be positive and finite; got -1.0"),
    ("train.momentum=5", 2, "command line: key 'train.momentum' must be in [0, 1); got 5.0"),
    ("model.num_classes=2", 2, "classes.txt: lists 3 classes but model.num_classes is 2"),
])
def test_bad_list_or_config_value_is_one_line(root, tmp_path, capsys, override, code, expected):
    assert run_cli(train_argv(root, tmp_path / "run", override)) == code
    assert expected in one_error_line(capsys, "train")


@pytest.mark.parametrize("key, value", [
    ("train.lr", 0), ("train.lr_multi", 0), ("train.weight_decay", -0.1), ("train.momentum", 1.0),
    ("train.batch_size", 0), ("train.epochs", 0), ("data.workers", -2), ("train.ohem_thresh", 1.5),
    ("train.warmup_epochs", -1), ("eval.stride_ratio", 0), ("eval.crop_size", 0), ("train.lr", ".inf"),
])
def test_out_of_range_value_names_key(key, value):
    with pytest.raises(ConfigError, match=f"^command line: key '{key}' must be"):
        load_config("demo", [f"{key}={value}"])


def test_key_from_the_file_is_reported_with_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: sup\nmodel: {ablation: none}\ntrain: {momentum: 5}\n")
    with pytest.raises(ConfigError, match=f"^{path}: key 'train.momentum'"):
        load_config(path)
    with pytest.raises(ConfigError, match="^command line: key 'train.lr' expects float"):
        load_config(path, ["train.lr=abc"])


def test_check_data_reports_num_classes_against_classes_txt(root, capsys):
    assert run_cli(["check-data", str(root), "--num-classes", "2"]) == 1
    out = capsys.readouterr().out
    assert f"{root / 'classes.txt'}: lists 3 classes but model.num_classes is 2" in out


def _bad_checkpoint(kind, tmp_path):
    path = tmp_path / f"{kind}.safetensors"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(2048))
    elif kind == "plain":
        save_file({"w": torch.zeros(2)}, str(path))
    elif kind == "state":
        path = tmp_path / "latest.state.pt"
        torch.save({"iteration": 3}, path)
    elif kind == "empty_run":
        path = tmp_path / "run"
        path.mkdir()
    return path


@pytest.mark.parametrize("kind", ["missing", "random", "plain", "state", "empty_run"])
@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_bad_checkpoint_is_one_line_naming_it(root, tmp_path, capsys, kind, command):
    path = _bad_checkpoint(kind, tmp_path)
    argv = {"eval": ["eval", "demo", f"data.root={root}", "--checkpoint", str(path)],
            "predict": ["predict", str(root / "images"), "--checkpoint", str(path), "--out", str(tmp_path / "p")],
            "export": ["export", str(tmp_path / "m.onnx"), "--checkpoint", str(path), "--no-check"]}[command]
    assert run_cli(argv) == 1
    assert str(path) in one_error_line(capsys, command)


def test_bad_checkpoint_raises_a_typed_error(tmp_path):
    from allspark.runs.weights_file import read_weights

    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_weights(_bad_checkpoint("random", tmp_path))


def test_eval_mismatch_names_the_differing_keys(root, checkpoint, capsys):
    argv = ["eval", "demo", f"data.root={root}", "model.num_classes=3", "model.crop_size=96", "--checkpoint",
            str(checkpoint)]
    assert run_cli(argv) == 2
    line = one_error_line(capsys, "eval")
    assert "model.crop_size: 64 -> 96" in line and "ModelConfig(" not in line


@pytest.mark.parametrize("command", ["train", "eval", "predict", "export"])
def test_output_that_cannot_be_written_is_one_line(root, checkpoint, tmp_path, capsys, command):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    argv = {"train": train_argv(root, blocker / "run"),
            "eval": ["eval", "demo", f"data.root={root}", "model.num_classes=3", "model.crop_size=64",
                     "--checkpoint", str(checkpoint), "--out", str(blocker)],
            "predict": ["predict", str(root / "images" / "val_00000.jpg"), "--checkpoint", str(checkpoint),
                        "--out", str(blocker / "p")],
            "export": ["export", str(blocker / "m.onnx"), "--checkpoint", str(checkpoint), "--no-check"]}[command]
    assert run_cli(argv) == 1
    assert str(blocker) in one_error_line(capsys, command)


def test_debug_flag_and_variable_show_the_traceback(root, tmp_path, monkeypatch, capsys):
    argv = train_argv(root, tmp_path / "run", "data.labeled_list=bad/truncated.txt")
    with pytest.raises(DataError, match="bad/truncated.jpg: unreadable"):
        main(["--debug", *argv])
    assert "Original Traceback" in capsys.readouterr().err  # the worker's traceback is shown too
    monkeypatch.setenv("ALLSPARK_DEBUG", "1")
    with pytest.raises(ConfigError, match="train.momentum"):
        main(train_argv(root, tmp_path / "run2", "train.momentum=5"))


def test_genuine_bug_keeps_its_traceback(monkeypatch):
    from allspark.commands import presets

    monkeypatch.setattr(presets, "listed_presets", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["presets"])
