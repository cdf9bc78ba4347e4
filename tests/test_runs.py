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

from allspark.config import ConfigError
from allspark.engine.optim import poly_factor
from allspark.engine.runs import lock_run_dir, read_metrics
from allspark.engine.trainer import Trainer, train
from allspark.models.weights import atomic_write
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
from allspark.engine.runs import lock_run_dir
held = lock_run_dir(sys.argv[1])
child = os.fork()  # as a DataLoader worker: it outlives a killed parent by a few seconds
if child == 0:
    time.sleep(60)
    os._exit(0)
print(child, flush=True)
time.sleep(60)
"""


def test_lock_dies_with_a_killed_process_not_with_its_workers(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    child = None
    try:
        child = int(holder.stdout.readline())
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
    _stop_at(monkeypatch, 5)  # latest is the end of epoch 0 (iteration 4)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(data_root, tmp_path, "semi"), progress=False)
    groups = []

    def step(self, batch_l, batch_u, use_memory):
        groups.append([(g["lr"], g["momentum"], g["weight_decay"]) for g in self.optimizer.param_groups])
        return STEP(self, batch_l, batch_u, use_memory)  # runs at the lr recorded above

    monkeypatch.setattr(Trainer, "step", step)
    changed = make_cfg(data_root, tmp_path, "semi", "train.lr=0.005", "train.momentum=0.8", "train.weight_decay=0.001")
    train(changed, force_config=True, progress=False)
    factor = poly_factor(4, 8)
    assert groups[0] == [(pytest.approx(0.005 * factor), 0.8, 0.001),
                         (pytest.approx(0.005 * changed.train.lr_multi * factor), 0.8, 0.001)]
    record = next(r for r in read_metrics(tmp_path) if r["split"] == "train" and r["iter"] == 5)
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
