"""The trainer on tiny synthetic data (MiT-B0, crop 64, 2 + 2): losses fall, resume is exact, a SIGKILLed run
resumes, NaN stops the run, the warm-up switch, OHEM and `best` behave, eval modes agree, the CLI runs."""
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
from allspark.config.loading import load_config
from allspark.data.loaders import build_labeled_loader, build_unlabeled_loader, build_val_loader
from allspark.engine import loop as loop_module
from allspark.engine.evaluate import evaluate
from allspark.engine.loop import train
from allspark.engine.losses import ce_loss, ohem_loss
from allspark.engine.step import Trainer
from allspark.errors import ConfigError, NonFiniteLossError
from allspark.models.allspark import AllSparkBottleneck
from allspark.runs.checkpoints import load_checkpoint
from allspark.runs.metrics import read_metrics
from allspark.runs.weights_file import read_weights, weights_metadata
from engine_helpers import make_cfg, make_train_data, train_until

MEMORY = "allspark.memory.queue"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_train_data(tmp_path_factory.mktemp("synthetic"))


@pytest.mark.parametrize("method", ["sup", "semi", "allspark"])
def test_loss_falls(data_root, tmp_path, method):
    torch.manual_seed(0)
    cfg = make_cfg(data_root, tmp_path, method, "train.lr=0.01")
    trainer = Trainer(cfg, total=100)
    batch_l = next(iter(build_labeled_loader(cfg)))
    batch_u = next(iter(build_unlabeled_loader(cfg))) if method != "sup" else None
    losses = [trainer.step(batch_l, batch_u, use_memory=method == "allspark")["loss"] for _ in range(8)]
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2]), losses


def test_resume_restores_iteration_optimizer_and_memory(data_root, tmp_path, monkeypatch):
    cfg = make_cfg(data_root, tmp_path / "run")  # 8 unlabeled / 2 = 4 iterations per epoch, 8 in all
    seen, snapshots = [], {}
    original = Trainer.step

    def interrupted(self, batch_l, batch_u, use_memory):
        iteration = self.iteration
        if iteration == 3:  # killed mid-epoch 0, after the checkpoint at iteration 3
            raise KeyboardInterrupt
        seen.append(iteration)
        out = original(self, batch_l, batch_u, use_memory)
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

    def spy(self, batch_l, batch_u, use_memory):
        iteration = self.iteration
        if not resumed:
            resumed["memory"] = self.model.state_dict()[MEMORY].clone()
            resumed["momentum"] = [self.optimizer.state[p]["momentum_buffer"].clone()
                                   for p in self.optimizer.param_groups[1]["params"][:3]]
        seen.append(iteration)
        return original(self, batch_l, batch_u, use_memory)

    monkeypatch.setattr(Trainer, "step", spy)
    seen.clear()
    result = train(cfg, progress=False)
    assert seen == [3, 4, 5, 6, 7] and result["iteration"] == 8
    assert torch.equal(resumed["memory"], snapshots["memory"])
    assert all(torch.equal(a, b) for a, b in zip(resumed["momentum"], snapshots["momentum"]))
    train_iters = [r["iter"] for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    assert train_iters == list(range(1, 9))  # records past the checkpoint were dropped, none repeated
    assert [r["epoch"] for r in read_metrics(tmp_path / "run") if r["split"] == "val"] == [1, 2]


def _train_recording(cfg, monkeypatch, stop_at=None) -> dict[int, list[torch.Tensor]]:
    """Train `cfg`, recording each iteration's batch tensors; raise KeyboardInterrupt at iteration `stop_at`."""
    batches = {}

    def record(iteration, batch_l, batch_u):
        batches[iteration] = [batch[key] for batch in (batch_l, batch_u or {}) for key in sorted(batch)]

    train_until(cfg, monkeypatch, stop_at, record)
    return batches


@pytest.mark.parametrize("method,extra,stop_at,restart", [
    ("allspark", ("data.workers=2",), 7, 6),  # 4 iterations per epoch: resumed mid-epoch 1, 2 loader workers
    ("sup", ("train.epochs=4", "train.checkpoint_every=5"), 5, 5)])  # 2 per epoch: resumed mid-epoch 2
def test_batch_order_after_a_resume_equals_an_uninterrupted_run(data_root, tmp_path, monkeypatch, method, extra,
                                                                 stop_at, restart):
    """Stopped at `stop_at` and resumed from the checkpoint at `restart`: the same batches (images, masks, valid
    maps) and the same losses and lr, step for step, as an uninterrupted run."""
    whole_cfg, parts_cfg = (make_cfg(data_root, tmp_path / name, method, *extra) for name in ("whole", "parts"))
    whole = _train_recording(whole_cfg, monkeypatch)
    first = _train_recording(parts_cfg, monkeypatch, stop_at=stop_at)
    assert sorted(first) == list(range(stop_at)) and load_checkpoint(tmp_path / "parts")[1]["iteration"] == restart
    resumed = _train_recording(parts_cfg, monkeypatch)
    assert sorted(resumed) == list(range(restart, len(whole))) and len(whole) == 8
    for iteration, tensors in resumed.items():
        assert len(tensors) == len(whole[iteration])
        assert all(torch.equal(a, b) for a, b in zip(tensors, whole[iteration])), f"batch {iteration} differs"

    def losses(run):
        return [(r["iter"], r["loss"], r["loss_l"], r["loss_u"], r["lr"]) for r in read_metrics(run)
                if r["split"] == "train"]

    assert losses(tmp_path / "parts") == losses(tmp_path / "whole")


def test_the_warm_up_switch_turns_the_memory_on(data_root, tmp_path, monkeypatch):
    """train.warmup_epochs=1: the bottleneck attends to the unlabeled batch in epoch 0 and to the memory from
    epoch 1 on, and the metrics say which; the memory is written from the first step."""
    reads, sums = [], []
    forward_semi = AllSparkBottleneck.forward_semi

    def spy(self, x_l, x_u, teacher_logits_u, use_memory):
        if self.training:
            reads.append(use_memory)
            sums.append(float(self.memory.queue.sum()))
        return forward_semi(self, x_l, x_u, teacher_logits_u, use_memory)

    monkeypatch.setattr(AllSparkBottleneck, "forward_semi", spy)
    train(make_cfg(data_root, tmp_path / "run", "allspark", "train.warmup_epochs=1"), progress=False)
    assert reads == [False] * 4 + [True] * 4
    assert sums[0] != sums[1]  # the first step wrote the memory
    logged = [r["use_memory"] for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    assert logged == [0] * 4 + [1] * 4


@pytest.mark.parametrize("method", ["sup", "allspark"])
def test_ohem_is_the_labeled_loss_through_the_trainer(data_root, tmp_path, method):
    """train.labeled_loss=ohem reaches the step: the labeled term is OHEM of the student's labeled logits, which
    here (few hard pixels kept) differs from plain CE."""
    cfg = make_cfg(data_root, tmp_path / "run", method, "train.labeled_loss=ohem", "train.ohem_thresh=0.1",
                   "train.ohem_min_kept=100")
    trainer = Trainer(cfg, total=8)
    logits = []
    trainer.model.register_forward_hook(lambda module, args, out: logits.append(out[0] if method != "sup" else out))
    batch_l = next(iter(build_labeled_loader(cfg)))
    batch_u = next(iter(build_unlabeled_loader(cfg))) if method != "sup" else None
    record = trainer.step(batch_l, batch_u, use_memory=False)
    student = logits[-1].detach()  # (B, K, S, S) of the labeled images
    t = cfg.train
    assert record["loss_l"] == pytest.approx(float(ohem_loss(student, batch_l["mask"], t.ohem_thresh,
                                                             t.ohem_min_kept)), rel=1e-5)
    assert record["loss_l"] != pytest.approx(float(ce_loss(student, batch_l["mask"])), rel=1e-3)


def test_best_is_written_only_when_the_miou_improves(data_root, tmp_path, monkeypatch):
    """Three evaluations scoring 0.3, 0.2, 0.4: `best` is written at the first and the third, never at the
    second, and the state keeps the best score."""
    scores, seen = iter([0.3, 0.2, 0.4]), []
    best = tmp_path / "run" / "checkpoints" / "best.safetensors"

    class Scored:
        def __init__(self, miou):
            self.value = miou

        def miou(self):
            return self.value

        def iou(self):
            return torch.full((4,), self.value)

    def scripted(*args, **kwargs):
        seen.append(weights_metadata(best) if best.is_file() else None)  # best as it stands before this score
        return Scored(next(scores))

    monkeypatch.setattr(loop_module, "evaluate", scripted)
    train(make_cfg(data_root, tmp_path / "run", "sup", "train.epochs=3"), progress=False)  # 2 iterations per epoch
    assert seen[0] is None
    assert (seen[1]["iteration"], float(seen[1]["miou"])) == ("2", 0.3)
    assert (seen[2]["iteration"], float(seen[2]["miou"])) == ("2", 0.3)  # 0.2 did not replace it
    final = weights_metadata(best)
    assert (final["iteration"], float(final["miou"])) == ("6", 0.4)
    assert load_checkpoint(tmp_path / "run")[1]["best_miou"] == 0.4


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
              "model.crop_size=64", "train.batch_size=2", "train.epochs=2",
              "train.warmup_epochs=1", "train.log_every=1", "train.checkpoint_every=2", "--no-progress"])
    assert code.value.code != 0
    assert load_checkpoint(tmp_path / "run")[1]["iteration"] == 2


def test_crops_that_do_not_fit_the_memory_stop_the_step_before_any_weight_changes(data_root, tmp_path):
    trainer = Trainer(make_cfg(data_root, tmp_path / "run"), total=8)  # memory for crop 64: a 2x2 token grid
    other = make_cfg(data_root, tmp_path / "other", "allspark", "model.crop_size=96")
    batch_l, batch_u = next(iter(build_labeled_loader(other))), next(iter(build_unlabeled_loader(other)))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"built for a 2x2 token grid.*3x3 grid.*model.crop_size"):
        trainer.step(batch_l, batch_u, use_memory=False)
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in before.items())


def test_checkpoint_of_another_crop_is_refused_before_the_first_step(data_root, tmp_path, monkeypatch):
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
    model = Trainer(cfg, total=1).model.eval()
    loader = build_val_loader(cfg)
    whole, sliding, center = (evaluate(model, loader, cfg, torch.device("cpu"), mode, progress=False).matrix
                              for mode in ("whole", "sliding", "center"))
    assert whole.sum() == 2 * 64 * 64
    assert torch.equal(whole, sliding) and torch.equal(whole, center)


def test_eval_command_writes_eval_json(data_root, tmp_path):
    run = tmp_path / "run"
    overrides = [f"data.root={data_root}", f"run_dir={run}", "method=sup",
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
