"""`allspark pretrain` through the command line: a run, its probe score, and each bad input in one line."""
from __future__ import annotations

import torch

from allspark.models import build_model
from allspark.runs.folder import RunFolder
from allspark.runs.weights_file import save_weights
from inference_helpers import run_cli
from pretrain_helpers import pretrain_cfg, registered, root  # noqa: F401 (fixtures)

SMALL = ["--iters", "2", "--batch-size", "2", "--crop", "64", "--no-progress", "--threads", "1"]



def _argv(run_dir, images, *extra):
    return ["pretrain", "demo", f"run_dir={run_dir}", "model.crop_size=64", "data.workers=0", "--images", str(images),
            *SMALL, *extra]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    return errors[0]


def test_pretrain_then_probe(root, tmp_path, capsys):
    argv = _argv(tmp_path / "run", root / "train.txt", f"data.root={root}", "--probe-list", "splits/labeled.txt",
                 "--probe-val", "val.txt", "--probe-iters", "2")
    assert run_cli(argv) == 0
    out = capsys.readouterr().out
    assert f"encoder weights: {RunFolder(tmp_path / 'run').weights('encoder')}" in out
    assert "probe (frozen encoder" in out and "mIoU" in out
    probe = RunFolder(tmp_path / "run" / "probe")
    from safetensors.torch import load_file
    encoder, head_trained = (load_file(str(path)) for path in (RunFolder(tmp_path / "run").weights("encoder"),
                                                               probe.weights("latest")))
    assert all(torch.equal(head_trained[k], v) for k, v in encoder.items())  # the probe's encoder: loaded, frozen
    assert run_cli(argv[:-6] + ["--iters", "3"]) == 2  # another schedule in the same run folder: refused
    assert "other options (iters: 2 -> 3)" in _one_error_line(capsys)


def test_init_starts_from_the_given_weights(root, tmp_path):
    torch.manual_seed(5)
    cfg = pretrain_cfg(tmp_path / "x")
    start = build_model(cfg).encoder.state_dict()
    save_weights(tmp_path / "start.safetensors", {f"encoder.{k}": v for k, v in start.items()}, cfg)
    for run, extra in (("init", ["--init", str(tmp_path / "start.safetensors")]), ("random", [])):
        assert run_cli(_argv(tmp_path / run, root / "images", "--lr", "1e-12", *extra)) == 0
    from safetensors.torch import load_file
    init, random = (load_file(str(RunFolder(tmp_path / run).weights("encoder"))) for run in ("init", "random"))
    assert all(torch.allclose(init[f"encoder.{k}"], v, atol=1e-6) for k, v in start.items())
    assert not all(torch.allclose(random[f"encoder.{k}"], v, atol=1e-6) for k, v in start.items())


def test_an_empty_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_cli(_argv(tmp_path / "run", tmp_path / "empty")) == 1
    assert "no images" in _one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_an_unreadable_image_is_one_line(root, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((root / "images").iterdir())[:3]:
        (images / path.name).write_bytes(path.read_bytes())
    (images / "broken.png").write_bytes(b"not a png")
    assert run_cli(_argv(tmp_path / "run", images)) == 1
    line = _one_error_line(capsys)
    assert "broken.png" in line and "unreadable" in line


def test_a_teacher_of_another_family_is_one_line(root, tmp_path, capsys):
    cfg = pretrain_cfg(tmp_path / "x")
    state = build_model(cfg).encoder.state_dict()
    save_weights(tmp_path / "mit.safetensors", {f"encoder.{k}": v for k, v in state.items()}, cfg)
    code = run_cli(_argv(tmp_path / "run", root / "images", "--teacher", str(tmp_path / "mit.safetensors"),
                         "--teacher-encoder", "dinov2_tiny"))
    line = _one_error_line(capsys)
    assert code != 0 and "holds mit_b0 weights (mit family)" in line and "set --teacher-encoder mit_b0" in line
    assert "model.encoder" not in line  # the student's key is not the one to change
    assert not (tmp_path / "run").exists()


def test_two_processes_under_torchrun(root, tmp_path):
    import os
    import subprocess
    import sys
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "allspark", *_argv(tmp_path / "run", root / "images"), "--nproc", "2",
            "--device", "cpu", "train.amp=bf16"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("encoder weights:") == 1  # rank 0 alone reports
    assert "2 process(es)" in done.stderr
    build_model(pretrain_cfg(tmp_path / "seg", "mit_b0", f"model.pretrained={tmp_path / 'run'}"))
