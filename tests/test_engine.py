"""The trainer on tiny synthetic data (MiT-B0, crop 64, 2 + 2): losses fall, resume is exact,
a SIGKILLed run resumes, NaN stops the run, eval modes agree, the CLI runs."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from allspark.cli import main
from allspark.config import ConfigError, load_config
from allspark.data import build_labeled_loader, build_unlabeled_loader, build_val_loader
from allspark.data.splits import make_split
from allspark.data.synthetic import generate_synthetic
from allspark.engine.checkpoint import load_checkpoint, read_weights
from allspark.engine.evaluate import evaluate
from allspark.engine.runs import read_metrics
from allspark.engine.trainer import NonFiniteLossError, Trainer, train

ABLATION = {"sup": "none", "semi": "none", "allspark": "full"}
MEMORY = "allspark.memory.queue"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread, and the test machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, num_train=12, num_val=2, size=64, seed=0, num_classes=4)
    make_split(root / "train.txt", root / "splits", count=4, seed=0)
    return root


def make_cfg(root, run_dir, method="allspark", *extra):
    return load_config("demo", [f"method={method}", f"model.ablation={ABLATION[method]}", f"data.root={root}",
                                f"run_dir={run_dir}", "model.crop_size=64", "train.batch_size=2", "train.epochs=2",
                                "train.warmup_epochs=1", "train.log_every=1", "train.checkpoint_every=3", *extra])


@pytest.mark.parametrize("method", ["sup", "semi", "allspark"])
def test_loss_falls(data_root, tmp_path, method):
    torch.manual_seed(0)
    cfg = make_cfg(data_root, tmp_path, method, "train.lr=0.01")
    trainer = Trainer(cfg)
    batch_l = next(iter(build_labeled_loader(cfg)))
    batch_u = next(iter(build_unlabeled_loader(cfg))) if method != "sup" else None
    losses = [trainer.step(batch_l, batch_u, i, 100, use_memory=method == "allspark")["loss"] for i in range(8)]
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2]), losses


def test_resume_restores_iteration_optimizer_and_memory(data_root, tmp_path, monkeypatch):
    cfg = make_cfg(data_root, tmp_path / "run")  # 8 unlabeled / 2 = 4 iterations per epoch, 8 in all
    seen, snapshots = [], {}
    original = Trainer.step

    def interrupted(self, batch_l, batch_u, iteration, total, use_memory):
        if iteration == 3:  # killed mid-epoch 0, after the checkpoint at iteration 3
            raise KeyboardInterrupt
        seen.append(iteration)
        out = original(self, batch_l, batch_u, iteration, total, use_memory)
        if iteration == 2:  # state after 3 iterations = the checkpoint at iteration 3
            snapshots["memory"] = self.model.state_dict()[MEMORY].clone()
            snapshots["momentum"] = [self.optimizer.state[p]["momentum_buffer"].clone()
                                     for p in self.optimizer.param_groups[1]["params"][:3]]
        return out

    monkeypatch.setattr(Trainer, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    assert seen == [0, 1, 2]
    model_state, state = load_checkpoint(tmp_path / "run")
    assert (state["iteration"], state["epoch"], state["epoch_iter"]) == (3, 0, 3)
    assert torch.equal(model_state[MEMORY], snapshots["memory"])

    resumed = {}

    def spy(self, batch_l, batch_u, iteration, total, use_memory):
        if not resumed:
            resumed["memory"] = self.model.state_dict()[MEMORY].clone()
            resumed["momentum"] = [self.optimizer.state[p]["momentum_buffer"].clone()
                                   for p in self.optimizer.param_groups[1]["params"][:3]]
        seen.append(iteration)
        return original(self, batch_l, batch_u, iteration, total, use_memory)

    monkeypatch.setattr(Trainer, "step", spy)
    seen.clear()
    result = train(cfg, progress=False)
    assert seen == [3, 4, 5, 6, 7] and result["iteration"] == 8
    assert torch.equal(resumed["memory"], snapshots["memory"])
    assert all(torch.equal(a, b) for a, b in zip(resumed["momentum"], snapshots["momentum"]))
    train_iters = [r["iter"] for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    assert train_iters == list(range(1, 9))  # records past the checkpoint were dropped, none repeated
    assert [r["epoch"] for r in read_metrics(tmp_path / "run") if r["split"] == "val"] == [1, 2]


def test_sigkill_mid_epoch_then_resume(data_root, tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "allspark", "train", "demo", f"data.root={data_root}", f"run_dir={run}",
            "model.crop_size=64", "train.batch_size=2", "train.epochs=4", "train.checkpoint_every=2",
            "train.eval_every=4", "--no-progress", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = run / "checkpoints" / "latest.state.pt"
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, saved = load_checkpoint(run)
    assert saved["iteration"] < 16, "the run finished before it could be killed"
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming {run} at iteration {saved['iteration']}" in (run / "train.log").read_text()
    _, final = load_checkpoint(run)
    assert (final["iteration"], final["epoch"]) == (16, 4)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_root, tmp_path, monkeypatch):
    cfg = make_cfg(data_root, tmp_path / "run", "semi", "train.checkpoint_every=2")
    original = Trainer.losses
    calls, poison_at = [], [3]

    def poisoned(self, batch_l, batch_u, use_memory):
        calls.append(1)
        terms = original(self, batch_l, batch_u, use_memory)
        if len(calls) == poison_at[0]:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(Trainer, "losses", poisoned)
    with pytest.raises(NonFiniteLossError, match="iteration 2"):
        train(cfg, progress=False)
    model_state, state = load_checkpoint(tmp_path / "run")
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in model_state.values() if v.is_floating_point())
    calls.clear()
    poison_at[0] = 1  # the resumed run's first step: the CLI exits non-zero
    with pytest.raises(SystemExit) as code:
        main(["train", "demo", f"data.root={data_root}", f"run_dir={tmp_path / 'run'}", "method=semi",
              "model.ablation=none", "model.crop_size=64", "train.batch_size=2", "train.epochs=2",
              "train.warmup_epochs=1", "train.log_every=1", "train.checkpoint_every=2", "--no-progress"])
    assert code.value.code != 0
    assert load_checkpoint(tmp_path / "run")[1]["iteration"] == 2


def test_crop_mismatch_caught_before_first_step(data_root, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(make_cfg(data_root, run, "allspark", "train.epochs=1"), progress=False)
    steps = []
    monkeypatch.setattr(Trainer, "step", lambda *a: steps.append(1))
    with pytest.raises(ConfigError, match="model.crop_size"):
        train(make_cfg(data_root, run, "allspark", "train.epochs=1", "model.crop_size=96"), force_config=True,
              progress=False)
    assert steps == []


def test_run_dir_refuses_different_config(data_root, tmp_path):
    train(make_cfg(data_root, tmp_path, "sup", "train.epochs=1"), progress=False)
    with pytest.raises(ConfigError, match="train.lr"):
        train(make_cfg(data_root, tmp_path, "sup", "train.epochs=1", "train.lr=0.5"), progress=False)


def test_eval_modes_agree_when_window_covers_image(data_root, tmp_path):
    cfg = make_cfg(data_root, tmp_path, "allspark", "eval.crop_size=64")  # val images are 64 x 64
    model = Trainer(cfg).model.eval()
    loader = build_val_loader(cfg)
    whole, sliding, center = (evaluate(model, loader, cfg, torch.device("cpu"), mode, progress=False).matrix
                              for mode in ("whole", "sliding", "center"))
    assert whole.sum() == 2 * 64 * 64
    assert torch.equal(whole, sliding) and torch.equal(whole, center)


def test_eval_command_writes_eval_json(data_root, tmp_path):
    run = tmp_path / "run"
    overrides = [f"data.root={data_root}", f"run_dir={run}", "method=sup", "model.ablation=none",
                 "model.crop_size=64", "train.batch_size=2", "train.epochs=1"]
    train(load_config("demo", overrides), progress=False)
    with pytest.raises(SystemExit) as code:
        main(["eval", "demo", *overrides, "--checkpoint", str(run), "--mode", "sliding"])
    assert code.value.code == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["mode"] == "sliding" and len(result["iou"]) == 4 and len(result["confusion"]) == 4
    best = read_weights(run / "checkpoints" / "best.safetensors")[1]
    assert best.method == "sup"
    assert result["class_names"][0] == "background"
