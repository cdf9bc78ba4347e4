"""bf16 and fp16 autocast and torch.compile on the CPU through the trainer: losses fall, the attention maps and the
Semantic Memory stay fp32 (METHODS.md 6), an interrupted run resumes; `allspark eval --amp bf16`."""
import json

import pytest
import torch
from torch import nn

import allspark.models.allspark as allspark_module
from allspark.cli import main
from allspark.data.loaders import build_labeled_loader, build_unlabeled_loader
from allspark.data.splits import make_split
from allspark.data.synthetic import generate_synthetic
from allspark.engine.loop import train
from allspark.engine.step import Trainer
from allspark.runs.checkpoints import load_checkpoint
from allspark.runs.metrics import read_metrics

MEMORY = "allspark.memory.queue"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, num_train=12, num_val=2, size=64, seed=0, num_classes=4)
    make_split(root / "train.txt", root / "splits", count=4, seed=0)
    return root


def overrides(root, run_dir, *extra):
    """AllSpark, MiT-B0, crop 64, 2 + 2, memory on from the first step: 4 iterations per epoch, 8 in all."""
    return [f"data.root={root}", f"run_dir={run_dir}", "model.crop_size=64", "train.batch_size=2", "train.epochs=2",
            "train.warmup_epochs=0", "train.log_every=1", "train.checkpoint_every=3", *extra]


def make_cfg(root, run_dir, *extra):
    from allspark.config.loading import load_config

    return load_config("demo", overrides(root, run_dir, *extra))


def interrupt_then_resume(cfg, monkeypatch) -> tuple[list[int], dict]:
    """Run `cfg` until iteration 3 (checkpoint), stop it there, run it again: (iterations stepped, result)."""
    original, seen, stopped = Trainer.step, [], []

    def stopping(self, batch_l, batch_u, use_memory):
        iteration = self.iteration
        if iteration == 3 and not stopped:
            stopped.append(iteration)
            raise KeyboardInterrupt
        seen.append(iteration)
        return original(self, batch_l, batch_u, use_memory)

    monkeypatch.setattr(Trainer, "step", stopping)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    result = train(cfg, progress=False)
    return seen, result


@pytest.mark.parametrize("amp,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_loss_falls_with_fp32_maps_and_memory(data_root, tmp_path, monkeypatch, amp, dtype):
    torch.manual_seed(0)
    trainer = Trainer(make_cfg(data_root, tmp_path, f"train.amp={amp}", "train.lr=0.01"), total=100)
    assert trainer.scaler.is_enabled() == (amp == "fp16")  # loss scaling is for fp16 only
    map_dtypes, head_dtypes = [], []
    chunked = allspark_module.chunked_dropout_attention

    def spy(q, k, v, dropout_p):  # the CPU path of the memory attention: its inputs make the map
        map_dtypes.append((q.dtype, k.dtype, v.dtype))
        return chunked(q, k, v, dropout_p)

    monkeypatch.setattr(allspark_module, "chunked_dropout_attention", spy)
    trainer.model.head.classifier.register_forward_hook(lambda m, i, out: head_dtypes.append(out.dtype))
    memory_before = trainer.model.allspark.memory.queue.clone()
    batch_l = next(iter(build_labeled_loader(trainer.cfg)))
    batch_u = next(iter(build_unlabeled_loader(trainer.cfg)))
    losses = [trainer.step(batch_l, batch_u, use_memory=True)["loss"] for _ in range(8)]
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2]), losses
    assert set(head_dtypes) == {dtype}  # autocast reached the head on the CPU
    assert map_dtypes and set(map_dtypes) == {(torch.float32,) * 3}
    queue = trainer.model.allspark.memory.queue
    assert queue.dtype == torch.float32 and not torch.equal(queue, memory_before)


def test_bf16_interrupted_run_resumes(data_root, tmp_path, monkeypatch):
    seen, result = interrupt_then_resume(make_cfg(data_root, tmp_path / "run", "train.amp=bf16"), monkeypatch)
    assert seen == list(range(8)) and result["iteration"] == 8
    model_state, state = load_checkpoint(tmp_path / "run")
    assert state["iteration"] == 8 and model_state[MEMORY].dtype == torch.float32


@pytest.mark.slow  # inductor compiles the C++ kernels of every graph: minutes on a cold cache
def test_compile_runs_writes_memory_and_resumes(data_root, tmp_path, monkeypatch):
    cfg = make_cfg(data_root, tmp_path / "run", "train.compile=true")
    seen, result = interrupt_then_resume(cfg, monkeypatch)
    assert seen == list(range(8)) and result["iteration"] == 8
    model_state, state = load_checkpoint(tmp_path / "run")
    assert model_state[MEMORY].dtype == torch.float32
    assert state["iteration"] == 8 and model_state["allspark.memory.ptr"].sum() > 0  # the compiled step wrote it
    losses = [r["loss"] for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    assert len(losses) == 8 and all(map(torch.isfinite, torch.tensor(losses)))


def without_module_dropout(trainer: Trainer) -> Trainer:
    """Dropout, Dropout2d and drop-path at 0: inductor draws their masks from its own generator, not eager's.
    The memory attention's dropout stays: it runs eagerly (a graph break) on the global generator."""
    for module in trainer.model.modules():
        if isinstance(module, (nn.Dropout, nn.Dropout2d)):
            module.p = 0.0
        if hasattr(module, "drop_prob"):  # transformers' stochastic depth
            module.drop_prob = 0.0
    return trainer


@pytest.mark.slow  # inductor compiles the C++ kernels of every graph: minutes on a cold cache
def test_compiled_steps_compute_what_eager_steps_do(data_root, tmp_path):
    """Same weights, batches and seeds: compiled steps give eager's losses, weights, BatchNorm statistics, Semantic
    Memory and pointers, before and after the memory becomes the keys (a lost or doubled buffer write, a stale
    train/eval graph of the student-as-teacher would show here)."""
    trainers = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        # fp32: inductor's kernels round bf16 otherwise than eager's, past these bounds (a wrong buffer write is not)
        cfg = make_cfg(data_root, tmp_path / str(compiled), f"train.compile={str(compiled).lower()}", "train.amp=off")
        trainers[compiled] = without_module_dropout(Trainer(cfg, total=100))
    unlabeled = build_unlabeled_loader(cfg)
    batches = list(zip(build_labeled_loader(cfg, length=len(unlabeled.dataset)), unlabeled))
    for step, (batch_l, batch_u) in enumerate(batches):
        records = {}
        for compiled, trainer in trainers.items():
            torch.manual_seed(step)
            records[compiled] = trainer.step(batch_l, batch_u, use_memory=step >= 2)
        for term in ("loss", "loss_l", "loss_u"):
            assert records[True][term] == pytest.approx(records[False][term], rel=1e-4), (step, term)
    eager, compiled = (trainer.model.state_dict() for trainer in trainers.values())
    assert compiled["allspark.memory.ptr"].sum() > 0  # the memory was written
    for name, value in eager.items():  # k_proj biases get no gradient (softmax ignores them): rounding noise
        torch.testing.assert_close(compiled[name], value, rtol=1e-3, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_eval_command_amp_bf16(data_root, tmp_path):
    run = tmp_path / "run"
    args = overrides(data_root, run, "train.epochs=1")
    train(make_cfg(data_root, run, "train.epochs=1"), progress=False)
    results = {}
    for amp in ("off", "bf16"):
        with pytest.raises(SystemExit) as code:
            main(["eval", "demo", *args, "--checkpoint", str(run), "--amp", amp, "--out", str(tmp_path / amp)])
        assert code.value.code == 0
        results[amp] = json.loads((tmp_path / amp / "eval.json").read_text())
    assert results["bf16"]["amp"] == "bf16"
    off, bf16 = (torch.tensor(results[amp]["confusion"]) for amp in ("off", "bf16"))
    assert off.sum() == bf16.sum() == 2 * 64 * 64
    assert (off.diag().sum() - bf16.diag().sum()).abs() <= 0.02 * off.sum()  # bf16 agrees on accuracy
