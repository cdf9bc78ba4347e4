"""SIGINT and SIGTERM: the first finishes the step, saves `latest` and exits 130 / 143 with one line (also in
train.log), and the resumed run is exact; a second one stops at once and keeps the last checkpoint."""
import os
import signal
import subprocess
import sys
import time

import pytest

from allspark.cli import main
from allspark.engine.loop import train
from allspark.engine.step import Trainer
from allspark.runs.checkpoints import load_checkpoint
from allspark.runs.metrics import read_metrics
from engine_helpers import STEP, make_cfg, make_train_data

ARGS = ["model.crop_size=64", "train.batch_size=2", "train.epochs=2", "train.warmup_epochs=1", "train.log_every=1",
        "train.checkpoint_every=3", "--no-progress"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_train_data(tmp_path_factory.mktemp("synthetic"))


def _signal_during_step(monkeypatch, at: int, *signums: int) -> None:
    """Send this process `signums` while the step of iteration `at` runs."""
    def step(self, batch_l, batch_u, use_memory):
        if self.iteration == at:
            for signum in signums:
                os.kill(os.getpid(), signum)
        return STEP(self, batch_l, batch_u, use_memory)

    monkeypatch.setattr(Trainer, "step", step)


def _train_losses(run):
    return [(r["iter"], r["loss"], r["lr"]) for r in read_metrics(run) if r["split"] == "train"]


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_saves_the_step_and_the_resumed_run_is_exact(data_root, tmp_path, monkeypatch, signum, status):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(make_cfg(data_root, whole), progress=False)
    _signal_during_step(monkeypatch, 4, signum)  # iteration 4 is not a checkpoint_every multiple
    with pytest.raises(SystemExit) as code:
        main(["train", "demo", f"data.root={data_root}", f"run_dir={parts}", *ARGS,
              "--threads", "1"])  # as the in-process runs (conftest), for equal sums
    assert code.value.code == status
    assert load_checkpoint(parts)[1]["iteration"] == 5  # the step that was running finished and was saved
    log = (parts / "train.log").read_text().splitlines()
    assert f"stopped by {signal.Signals(signum).name} at iteration 5" in log[-1]
    monkeypatch.setattr(Trainer, "step", STEP)
    train(make_cfg(data_root, parts), progress=False)
    assert _train_losses(parts) == _train_losses(whole)


def test_a_second_signal_stops_at_once_and_keeps_the_last_checkpoint(data_root, tmp_path, monkeypatch):
    run = tmp_path / "run"
    _signal_during_step(monkeypatch, 4, signal.SIGINT, signal.SIGINT)
    with pytest.raises(SystemExit) as code:
        main(["train", "demo", f"data.root={data_root}", f"run_dir={run}", *ARGS])
    assert code.value.code == 130
    assert load_checkpoint(run)[1]["iteration"] == 3  # the last train.checkpoint_every, not the stopped step
    assert "stopped at once by a second SIGINT" in (run / "train.log").read_text().splitlines()[-1]


def test_ctrl_c_on_the_command_with_loader_workers(data_root, tmp_path):
    """The real thing: SIGINT to the process group of `allspark train` with two loader workers; one line on
    stderr that is not a log line, exit 130, and `latest` at the iteration it names."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "allspark", "train", "demo", f"data.root={data_root}", f"run_dir={run}",
               *ARGS[:-1], "train.epochs=50", "train.checkpoint_every=1000", "data.workers=2", "--no-progress",
               "--threads", "1"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if " INFO " not in line and line.strip()]
    assert len(errors) == 1 and errors[0].startswith("allspark train: error: stopped by SIGINT"), stderr[-2000:]
    saved = load_checkpoint(run)[1]["iteration"]
    assert f"at iteration {saved} " in errors[0] and 0 < saved < 200
