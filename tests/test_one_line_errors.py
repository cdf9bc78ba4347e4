"""The last tracebacks of issue 20, each now one line naming the value: CUDA asked for without one, a corrupt
pretrained file, a crop too small for the encoder."""
import os

import pytest
import torch

from engine_helpers import make_train_data
from inference_helpers import run_cli

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


def test_a_corrupt_pretrained_file_is_one_line(data_root, tmp_path, capsys):
    garbage = tmp_path / "mit_b0.pth"
    garbage.write_bytes(os.urandom(512))
    assert run_cli([*TRAIN, f"run_dir={tmp_path / 'run'}", f"data.root={data_root}",
                    f"model.pretrained={garbage}"]) != 0
    assert f"{garbage}: not a PyTorch checkpoint" in _one_error_line(capsys)


@pytest.mark.parametrize("key", ["model.crop_size", "eval.crop_size"])
def test_a_crop_too_small_for_the_encoder_is_one_line(key, tmp_path, capsys):
    assert run_cli([*TRAIN, f"run_dir={tmp_path / 'run'}", f"{key}=8"]) == 2
    assert f"key '{key}' must be at least 32" in _one_error_line(capsys)
