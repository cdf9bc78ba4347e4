"""The run directory: one training at a time (a lock that dies with its process), config.yaml written only
for a run that starts, `--force-config` that takes effect or is refused, files readable by others."""
import os
import signal
import socket
import stat
import subprocess
import sys

import pytest
import torch
import yaml

from allspark.cli import main

from allspark.engine.loop import train
from allspark.engine.optim import poly_factor
from allspark.engine.step import Trainer
from allspark.errors import ConfigError
from allspark.runs.atomic import atomic_write
from allspark.runs.lock import lock_run_dir
from allspark.runs.metrics import read_metrics
from engine_helpers import make_cfg, make_train_data

STEP = Trainer.step


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_train_data(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _stop_at(monkeypatch, stop: int) -> None:
    """Make the trainer raise KeyboardInterrupt (as a killed run) when it reaches iteration `stop`."""
    def step(self, batch_l, batch_u, use_memory):
        iteration = self.iteration
        if iteration == stop:
            raise KeyboardInterrupt
        return STEP(self, batch_l, batch_u, use_memory)

    monkeypatch.setattr(Trainer, "step", step)


def test_second_training_in_a_busy_run_dir_is_refused(data_root, tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = make_cfg(data_root, run, "sup")
    refusals = []

    def step(self, batch_l, batch_u, use_memory):
        iteration = self.iteration
        if iteration == 1:
            with pytest.raises(ConfigError) as err:
                train(cfg, progress=False)
            refusals.append(str(err.value))
        return STEP(self, batch_l, batch_u, use_memory)

    monkeypatch.setattr(Trainer, "step", step)
    train(cfg, progress=False)
    assert len(refusals) == 1 and f"pid {os.getpid()} on {socket.gethostname()}" in refusals[0]
    assert "\n" not in refusals[0]
    assert [r["iter"] for r in read_metrics(run) if r["split"] == "train"] == [1, 2, 3, 4]
    assert (run / "train.log").read_text().count("method sup") == 1
    assert len(list((run / "tb").iterdir())) == 1
    train(cfg, progress=False)  # the lock went with the first run


HOLDER = """
import os, sys, time
from allspark.runs.lock import lock_run_dir
held = lock_run_dir(sys.argv[1])
child = os.fork()  # as a DataLoader worker: it outlives a killed parent by a few seconds
if child == 0:
    print("forked", flush=True)  # the fork handlers have run: the inherited lock file is closed
    time.sleep(60)
    os._exit(0)
print(child, flush=True)
time.sleep(60)
"""


def test_lock_dies_with_a_killed_process_not_with_its_workers(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                              start_new_session=True)  # out of reach of signals other tests send to their group
    child = None
    try:
        lines = {holder.stdout.readline().strip(), holder.stdout.readline().strip()}  # either order
        child = int((lines - {"forked"}).pop())
        with pytest.raises(ConfigError, match=f"in use by pid {holder.pid} on "):
            lock_run_dir(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    try:
        lock_run_dir(tmp_path).close()  # at once, while the forked child still runs
    finally:
        if child:
            os.kill(child, signal.SIGKILL)


@pytest.mark.parametrize("bad", ["data.labeled_list=splits/missing.txt", "model.pretrained=PRETRAINED"])
def test_failed_start_writes_no_config(data_root, tmp_path, bad):
    garbage = tmp_path / "mit_b0.pth"
    garbage.write_bytes(os.urandom(256))
    run = tmp_path / "run"
    with pytest.raises(Exception):
        train(make_cfg(data_root, run, "sup", bad.replace("PRETRAINED", str(garbage))), progress=False)
    assert not (run / "config.yaml").exists()
    train(make_cfg(data_root, run, "sup", "train.max_iters=1"), progress=False)  # the corrected command runs
    assert (run / "config.yaml").is_file()


@pytest.mark.parametrize("change,key", [("model.crop_size=96", "model.crop_size: 64 -> 96"),
                                        ("model.num_classes=5", "model.num_classes"),
                                        ("model.encoder=mit_b1", "model.encoder: 'mit_b0' -> 'mit_b1'")])
def test_rejected_force_config_keeps_config(data_root, tmp_path, change, key):
    cfg = make_cfg(data_root, tmp_path, "allspark", "train.epochs=1")
    train(cfg, progress=False)
    saved = (tmp_path / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=key):
        train(make_cfg(data_root, tmp_path, "allspark", "train.epochs=1", change), force_config=True, progress=False)
    assert (tmp_path / "config.yaml").read_text() == saved
    assert train(cfg, progress=False)["iteration"] == 4  # the original command is still accepted


def test_force_config_optimiser_keys_take_effect_on_resume(data_root, tmp_path, monkeypatch):
    _stop_at(monkeypatch, 5)  # latest is iteration 3 (train.checkpoint_every)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(data_root, tmp_path, "semi"), progress=False)
    groups = []

    def step(self, batch_l, batch_u, use_memory):
        groups.append([(g["lr"], g["momentum"], g["weight_decay"]) for g in self.optimizer.param_groups])
        return STEP(self, batch_l, batch_u, use_memory)  # runs at the lr recorded above

    monkeypatch.setattr(Trainer, "step", step)
    changed = make_cfg(data_root, tmp_path, "semi", "train.lr=0.005", "train.momentum=0.8", "train.weight_decay=0.001")
    train(changed, force_config=True, progress=False)
    factor = poly_factor(3, 8)
    assert groups[0] == [(pytest.approx(0.005 * factor), 0.8, 0.001),
                         (pytest.approx(0.005 * changed.train.lr_multi * factor), 0.8, 0.001)]
    record = next(r for r in read_metrics(tmp_path) if r["split"] == "train" and r["iter"] == 4)
    assert record["lr"] == pytest.approx(0.005 * factor)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["lr"] == 0.005


def test_written_files_follow_the_umask(data_root, tmp_path, umask_022):
    run = tmp_path / "run"
    train(make_cfg(data_root, run, "sup", "train.max_iters=1"), progress=False)
    for name in ("config.yaml", "checkpoints/latest.safetensors", "checkpoints/latest.state.pt",
                 "checkpoints/best.safetensors"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o644, name
    os.umask(0o077)
    atomic_write(tmp_path / "private.pt", lambda tmp: torch.save({}, tmp))
    assert stat.S_IMODE((tmp_path / "private.pt").stat().st_mode) == 0o600


def test_a_run_that_never_took_a_step_does_not_block_its_rerun(data_root, tmp_path, monkeypatch):
    """A bad first sample stops the run after config.yaml was written; the corrected command is not refused."""
    run = tmp_path / "run"

    def bad_first_sample(self, batch_l, batch_u, use_memory):
        raise ConfigError("bad.png: mask values 7 outside [0, 4)")

    monkeypatch.setattr(Trainer, "step", bad_first_sample)
    with pytest.raises(ConfigError, match="bad.png"):
        train(make_cfg(data_root, run, "sup", "train.lr=0.5"), progress=False)
    monkeypatch.setattr(Trainer, "step", STEP)
    assert train(make_cfg(data_root, run, "sup", "train.max_iters=1"), progress=False)["iteration"] == 1


def test_result_neutral_keys_need_no_force_config(data_root, tmp_path, monkeypatch):
    _stop_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(data_root, tmp_path, "sup", "train.checkpoint_every=2"), progress=False)
    monkeypatch.setattr(Trainer, "step", STEP)
    changed = make_cfg(data_root, tmp_path, "sup", "train.checkpoint_every=5", "data.workers=1", "train.log_every=2")
    assert train(changed, progress=False)["iteration"] == 4
    with pytest.raises(ConfigError, match="train.lr"):  # a key that changes the result still needs --force-config
        train(make_cfg(data_root, tmp_path, "sup", "train.checkpoint_every=5", "train.lr=0.5"), progress=False)


def test_a_forced_config_is_logged_and_the_replaced_one_kept(data_root, tmp_path):
    """--force-config of a finished run with a larger budget: the old config.yaml stays as config.3.yaml, the
    change is in train.log, and the epoch that max_iters cut short continues where it stopped."""
    train(make_cfg(data_root, tmp_path, "sup", "train.epochs=3", "train.max_iters=3"), progress=False)  # 2 per epoch
    first = (tmp_path / "config.yaml").read_text()
    result = train(make_cfg(data_root, tmp_path, "sup", "train.epochs=3", "train.max_iters=6"), force_config=True,
                   progress=False)
    assert (result["iteration"], result["epoch"]) == (6, 3)
    assert (tmp_path / "config.3.yaml").read_text() == first
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["max_iters"] == 6
    assert "config.yaml replaced at iteration 3 (the old one kept as config.3.yaml): train.max_iters: 3 -> 6" in (
        tmp_path / "train.log").read_text()
    epochs = [(r["iter"], r["epoch"]) for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert epochs == [(1, 0), (2, 0), (3, 1), (4, 1), (5, 2), (6, 2)]


def test_a_run_folder_works_from_any_folder(data_root, tmp_path, monkeypatch):
    """Relative data.root and run_dir are stored absolute: eval of the run from another folder finds its lists."""
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(data_root.parent)
    train(make_cfg(data_root.name, "runs/rel", "sup", "train.max_iters=1"), progress=False)
    run = data_root.parent / "runs" / "rel"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["run_dir"], saved["data"]["root"]) == (str(run), str(data_root))
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main_status(["eval", "--checkpoint", str(run), "--threads", "1"]) == 0
    assert (run / "eval.json").is_file()
    # the same relative command again, where it was typed: the same config, nothing replaced
    monkeypatch.chdir(data_root.parent)
    assert train(make_cfg(data_root.name, "runs/rel", "sup", "train.max_iters=1"), progress=False)["iteration"] == 1
    assert not list(run.glob("config.*.yaml"))


def main_status(argv) -> int:
    with pytest.raises(SystemExit) as code:
        main(argv)
    return code.value.code


def test_a_resumed_run_logs_no_tensorboard_step_twice(data_root, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _stop_at(monkeypatch, 3)  # the last checkpoint is at 2: steps 3 is logged, then logged again after the resume
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(data_root, tmp_path, "sup", "train.checkpoint_every=2"), progress=False)
    monkeypatch.setattr(Trainer, "step", STEP)
    train(make_cfg(data_root, tmp_path, "sup", "train.checkpoint_every=2"), progress=False)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2, 3, 4]


def test_images_in_both_training_lists_are_named_once(data_root, tmp_path):
    both = tmp_path / "both.txt"
    both.write_text((data_root / "splits" / "labeled.txt").read_text()
                    + (data_root / "splits" / "unlabeled.txt").read_text())
    train(make_cfg(data_root, tmp_path / "run", "semi", "train.max_iters=1", f"data.unlabeled_list={both}"),
          progress=False)
    warnings = [line for line in (tmp_path / "run" / "train.log").read_text().splitlines() if "in both" in line]
    assert len(warnings) == 1 and "WARNING 4 image(s) are in both" in warnings[0]
