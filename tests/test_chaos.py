"""A run stopped and restarted ends as the run left alone, bit for bit (benchmarks/studies/chaos.py, issue 32.9):
killed at random moments by SIGKILL, SIGINT and SIGTERM, and at the two moments chaos found wrong: a kill after an
epoch's evaluation whose checkpoint came before it (its validation line was written twice), and a signal in the last
step (the resumed run had no step left and never evaluated nor saved the finished run); and under torchrun, rank
1 resumed with rank 0's BatchNorm statistics (slow)."""
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

from allspark.engine.loop import train
from allspark.engine.step import Trainer
from allspark.errors import TrainingInterrupted
from engine_helpers import STEP, make_cfg, make_train_data, train_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, where benchmarks/ is
from benchmarks.studies.chaos import run_setting  # noqa: E402
from benchmarks.studies.chaos_compare import compare  # noqa: E402

NONE = {"tensors": 0, "bytes": 0, "values": 0, "metrics lines": 0}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_train_data(tmp_path_factory.mktemp("synthetic"))


def _left_alone(cfg, tmp_path) -> Path:
    """Train `cfg` to the end and move its run aside (the stopped run then uses the same run_dir, as chaos does)."""
    train(cfg, progress=False)
    whole = tmp_path / "whole"
    shutil.move(cfg.run_dir, whole)
    return whole


def test_a_kill_after_an_epochs_evaluation_writes_its_line_once(data_root, tmp_path, monkeypatch):
    cfg = make_cfg(data_root, tmp_path / "run", "allspark", "train.checkpoint_every=2")
    whole = _left_alone(cfg, tmp_path)
    train_until(cfg, monkeypatch, stop_at=4)  # saved at 4 (epoch 0, batch 4), evaluated epoch 0, killed
    monkeypatch.setattr(Trainer, "step", STEP)
    train(cfg, progress=False)
    assert compare(whole, tmp_path / "run") == (NONE, [])


def test_a_signal_in_the_last_step_finishes_the_run(data_root, tmp_path, monkeypatch):
    cfg = make_cfg(data_root, tmp_path / "run", "allspark")
    whole = _left_alone(cfg, tmp_path)

    def step(self, batch_l, batch_u, use_memory):
        if self.iteration == 7:  # the last of 8
            os.kill(os.getpid(), signal.SIGTERM)
        return STEP(self, batch_l, batch_u, use_memory)

    monkeypatch.setattr(Trainer, "step", step)
    try:
        train(cfg, progress=False)
    except TrainingInterrupted:
        pass  # today's code stopped here; the restart below must still end as the run left alone
    monkeypatch.setattr(Trainer, "step", STEP)
    train(cfg, progress=False)
    assert compare(whole, tmp_path / "run") == (NONE, [])


def test_mit_killed_three_times_at_random_ends_bit_for_bit(tmp_path):
    outcome = run_setting("mit", kills=3, seed=0, out=tmp_path)
    assert not outcome.failures
    assert sum(outcome.kills.values()) == 3, outcome
    assert outcome.differences == NONE and outcome.differing == [], outcome.differing


@pytest.mark.slow
def test_two_ranks_killed_at_random_end_bit_for_bit(tmp_path):
    """Under torchrun each rank keeps its own BatchNorm statistics; a resume must give each its own back."""
    outcome = run_setting("ddp", kills=2, seed=0, out=tmp_path)
    assert not outcome.failures and outcome.in_training >= 1, outcome
    assert outcome.differences == NONE and outcome.differing == [], outcome.differing
