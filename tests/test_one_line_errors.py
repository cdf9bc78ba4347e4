"""The last tracebacks of issue 20 and the wrong lines of issue 32, each now one line naming the value: CUDA asked
for without one, a corrupt or pickled pretrained file (never the advice to load it unsafely), a pretrained file of
another encoder, a crop too small for the encoder, an existing folder that takes no files, Ctrl-C outside training,
`splits --count 0`, a UniMatch V2 checkpoint converted with an AllSpark module."""
import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from allspark.models import build_model
from encoder_helpers import tiny_encoders
from engine_helpers import make_train_data
from inference_helpers import run_cli, write_images
from test_convert import original_mit_b0, release_state, tiny_cfg
from test_encoder_weights import original_dinov2, unimatch_v2_checkpoint

TRAIN = ["train", "demo", "method=sup", "model.crop_size=64", "model.num_classes=4", "train.max_iters=1",
         "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_train_data(tmp_path_factory.mktemp("synthetic"))


def _one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["train", "predict"])
def test_cuda_without_a_gpu_is_one_line(command, checkpoint, data_root, tmp_path, capsys):
    if command == "train":
        argv = [*TRAIN, f"run_dir={tmp_path / 'run'}", f"data.root={data_root}"]
    else:
        argv = ["predict", str(checkpoint), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]
    assert run_cli([*argv, "--device", "cuda"]) == 2
    assert "--device cuda: CUDA is not available" in _one_error_line(capsys)


def _garbage(path: Path) -> Path:
    path.write_bytes(b"\x80\x1f" + np.random.default_rng(1).bytes(510))  # a pickle of protocol 31: torch warns first
    return path


def _pickled_object(path: Path) -> Path:
    torch.save({"args": argparse.Namespace(lr=0.1), "model": {"w": torch.zeros(2)}}, path)
    return path


@pytest.mark.filterwarnings("error:Detected pickle protocol:UserWarning")  # what the command line would print
@pytest.mark.parametrize("make, reason", [(_garbage, "not tensors in PyTorch's format: Unsupported operand"),
                                          (_pickled_object, "argparse.Namespace object")])
@pytest.mark.parametrize("command", ["train", "convert-official"])
def test_an_unreadable_pth_is_one_line_without_unsafe_advice(command, make, reason, data_root, tmp_path, capsys):
    path = make(tmp_path / "mit_b0.pth")
    if command == "train":
        argv = [*TRAIN, f"run_dir={tmp_path / 'run'}", f"data.root={data_root}", f"model.pretrained={path}"]
    else:
        argv = ["convert-official", str(path), str(tmp_path / "out.safetensors"), "model.encoder=mit_b0",
                "model.num_classes=3", "model.crop_size=64"]
    assert run_cli(argv) == 1
    line = _one_error_line(capsys)
    assert line.startswith(f"allspark {command}: error: {path}: not a checkpoint that can be read safely")
    assert reason in line and "weights_only" not in line


@pytest.mark.parametrize("held, encoder, words", [
    ("dinov2_tiny.pth", "mit_b0", "holds dinov2_tiny weights (dinov2 family; keys such as cls_token"),
    ("dinov2_reg_tiny.pth", "mit_b0", "holds dinov2_reg_tiny weights (dinov2_reg family;"),
    ("mit_b0.pth", "dinov2_tiny", "holds mit_b0 weights (mit family; keys such as patch_embed1.proj.weight"),
    ("mit_b0.pth", "mit_b1", "holds mit_b0 weights (mit family;"),
    ("tiny.safetensors", "dinov2_tiny", "holds mit_b0 weights (mit family; keys such as stages."),
    ("dinov2_cut.pth", "mit_b0", "holds dinov2 weights of no registered size (keys such as cls_token"),
])
def test_a_pretrained_file_of_another_encoder_is_named(held, encoder, words, checkpoint, data_root, tmp_path, capsys):
    path = checkpoint if held == checkpoint.name else tmp_path / held  # ours: an MiT-B0 model's weights
    with tiny_encoders():
        if held == "dinov2_cut.pth":  # dinov2_tiny less its last block: a depth no size has
            torch.save({k: v for k, v in original_dinov2("dinov2_tiny").items() if ".3." not in k}, path)
        elif held.startswith("dinov2"):
            torch.save(original_dinov2(held.removesuffix(".pth")), path)
        elif held == "mit_b0.pth":
            torch.save(original_mit_b0(), path)
        crop = 56 if encoder.startswith("dinov2") else 64
        argv = [*TRAIN, f"run_dir={tmp_path / 'run'}", f"data.root={data_root}", f"model.encoder={encoder}",
                f"model.crop_size={crop}", f"model.pretrained={path}"]
        assert run_cli(argv) == 1
    line = _one_error_line(capsys)
    assert words in line and f"not weights of model.encoder {encoder}" in line and len(line) < 500, line


@pytest.mark.parametrize("key", ["model.crop_size", "eval.crop_size"])
def test_a_crop_too_small_for_the_encoder_is_one_line(key, tmp_path, capsys):
    assert run_cli([*TRAIN, f"run_dir={tmp_path / 'run'}", f"{key}=8"]) == 2
    assert f"key '{key}' must be at least 32" in _one_error_line(capsys)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_an_existing_folder_that_takes_no_files_is_named_so(checkpoint, capsys):
    pytest.importorskip("onnxscript")
    assert run_cli(["export", "/proc/x.onnx", "--checkpoint", str(checkpoint), "--no-check"]) == 1
    line = _one_error_line(capsys)
    assert line == "allspark export: error: /proc: folder is not writable", line


@pytest.mark.parametrize("command, target, kept", [
    ("eval", "allspark.commands.evaluate.run_evaluation", "nothing written (eval.json is written at the end)"),
    ("predict", "allspark.commands.predict.run_predict",
     "the predictions written so far are kept; the same command with --skip-existing predicts the rest"),
    ("suggest", "allspark.commands.suggest.suggest",
     "the scores so far are kept in OUT/scoring/; the same command resumes from them"),
])
def test_ctrl_c_outside_training_is_one_line_saying_what_is_kept(command, target, kept, checkpoint, tmp_path,
                                                                  capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupted)
    argv = {"eval": ["eval", "--checkpoint", str(checkpoint)],
            "predict": ["predict", *map(str, write_images(tmp_path / "in", [(40, 40)])), "--checkpoint",
                        str(checkpoint), "--out", str(tmp_path / "out")],
            "suggest": ["suggest", "--checkpoint", str(checkpoint), "--count", "1", "--out", str(tmp_path / "s")]}
    assert run_cli(argv[command]) == 130
    lines = [line for line in capsys.readouterr().err.splitlines() if "engine:" not in line]  # predict's engine note
    assert lines == [f"allspark {command}: interrupted by SIGINT (Ctrl-C); {kept}"]


@pytest.mark.parametrize("count", ["0", "-2"])
def test_splits_count_below_one_names_the_value(count, data_root, tmp_path, capsys):
    assert run_cli(["splits", str(data_root / "train.txt"), "--count", count, "--out", str(tmp_path / "s")]) == 2
    assert f"--count must be at least 1 (the number of labeled images); got {count}" in _one_error_line(capsys)


def test_a_checkpoint_and_a_method_that_disagree_on_the_allspark_module(tmp_path, capsys):
    with tiny_encoders():
        torch.save(unimatch_v2_checkpoint(), tmp_path / "v2.pth")
        assert run_cli(["convert-official", str(tmp_path / "v2.pth"), str(tmp_path / "v2.safetensors"),
                        "model.encoder=dinov2_tiny", "model.num_classes=3", "model.crop_size=56"]) == 2
    line = _one_error_line(capsys)
    assert "a UniMatch V2 checkpoint (DINOv2 + DPT) has no AllSpark module" in line and "method=sup" in line
    assert "allspark.attn" not in line
    torch.manual_seed(0)
    torch.save(release_state(build_model(tiny_cfg())), tmp_path / "release.pth")
    assert run_cli(["convert-official", str(tmp_path / "release.pth"), str(tmp_path / "r.safetensors"), "method=sup",
                    "model.encoder=mit_b0", "model.num_classes=5", "model.crop_size=64"]) == 2
    line = _one_error_line(capsys)
    assert "holds the AllSpark module" in line and "method=allspark" in line


def test_outputs_in_the_way_exit_1(checkpoint, tmp_path, capsys):
    a, b = (write_images(tmp_path / name, [(40, 40)])[0] for name in ("a", "b"))  # both img0.png
    assert run_cli(["predict", str(a), str(b), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")]) == 1
    assert "both write" in _one_error_line(capsys)
    (tmp_path / "taken.safetensors").write_bytes(b"")
    assert run_cli(["convert-official", str(tmp_path / "x.pth"), str(tmp_path / "taken.safetensors")]) == 1
    assert "taken.safetensors already exists; pass --force" in _one_error_line(capsys)


def test_ctrl_c_in_predict_ends_its_progress_bar_first(checkpoint, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("allspark.predict.outputs.write_outputs", interrupted)
    images = write_images(tmp_path / "in", [(40, 40)])
    assert run_cli(["predict", str(images[0]), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]) == 130
    lines = capsys.readouterr().err.split("\n")  # the bar redraws with \r: a line glued to it would not start one
    assert any(line.startswith("allspark predict: interrupted by SIGINT (Ctrl-C)") for line in lines), lines
