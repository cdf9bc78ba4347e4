"""Two CPU processes under torchrun (gloo): the memory agrees across ranks after a step, and a short
run writes one set of outputs. Run as a script, this file is the worker torchrun launches. The `distributed`
context manager tears down only the process group it set up."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

MEMORY = "allspark.memory.queue"


def worker(root: str, run_dir: str, out: str) -> None:
    """One rank: a step with the memory on, gather the memory from every rank, then a short `train`."""
    from allspark import distributed as dist_utils
    from allspark.config.loading import load_config
    from allspark.data.loaders import build_labeled_loader, build_unlabeled_loader
    from allspark.engine.loop import train
    from allspark.engine.step import Trainer

    torch.set_num_threads(1)
    with dist_utils.distributed("cpu") as info:
        cfg = load_config("demo", [f"data.root={root}", f"run_dir={run_dir}", "model.crop_size=64",
                                   "train.batch_size=2", "train.epochs=2", "train.warmup_epochs=1", "train.log_every=1",
                                   "train.checkpoint_every=1"])
        dist_utils.seed_everything(cfg.train.seed)
        trainer = Trainer(cfg, info, total=10)
        dist_utils.seed_everything(cfg.train.seed, info.rank)
        before = trainer.model.state_dict()[MEMORY].clone()
        batch_l = next(iter(build_labeled_loader(cfg, info.rank, info.world_size)))
        batch_u = next(iter(build_unlabeled_loader(cfg, info.rank, info.world_size)))
        trainer.step(batch_l, batch_u, use_memory=True)
        memory = trainer.model.state_dict()[MEMORY]
        memories = dist_utils.all_gather_object(memory)
        images = dist_utils.all_gather_object(batch_u["image"])
        result = train(cfg, progress=False)
        if info.is_main:
            Path(out).write_text(json.dumps({
                "world_size": info.world_size, "equal": all(torch.equal(m, memories[0]) for m in memories),
                "written": not torch.equal(memories[0], before),
                "batches_differ": not torch.equal(images[0], images[1]),
                "iteration": result["iteration"]}))


def _torchrun(tmp_path, *mode: str) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """Two ranks of this file's worker (`mode`: none, "stop", "v2", "v2vit" or "evalout") on fresh synthetic data:
    (run, out, process)."""
    from allspark.data.splits import make_split
    from allspark.data.synthetic import generate_synthetic

    root = generate_synthetic(tmp_path / "data", num_train=20, num_val=3, size=64, seed=0, num_classes=4)
    make_split(root / "train.txt", root / "splits", count=4, seed=0)
    run, out = tmp_path / "run", tmp_path / "result"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               __file__, *mode, str(root), str(run), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    return run, out, done


@pytest.mark.slow
def test_two_processes_gloo(tmp_path):
    from allspark.runs.checkpoints import load_checkpoint
    from allspark.runs.metrics import read_metrics

    run, out, done = _torchrun(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count(" INFO method allspark, 8 iterations") == 1  # rank 0 alone logs to the console
    result = json.loads(out.read_text())
    assert result["world_size"] == 2 and result["batches_differ"]
    assert result["written"] and result["equal"]  # METHODS.md 5: every rank enqueues the global batch
    # 16 unlabeled images / (2 per process x 2 processes) = 4 iterations per epoch, 2 epochs
    assert result["iteration"] == 8
    _, state = load_checkpoint(run)
    assert state["iteration"] == 8 and len(state["rng"]) == 2
    records = read_metrics(run)
    train_iters = [r["iter"] for r in records if r["split"] == "train"]
    assert train_iters == list(range(1, 9))  # rank 0 alone writes: no duplicate lines
    assert [r["epoch"] for r in records if r["split"] == "val"] == [1, 2]
    assert len(list((run / "tb").iterdir())) == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [  # rank 0 alone writes: the two last pairs
        "best.safetensors", "latest.safetensors", "latest.state.pt", "previous.safetensors", "previous.state.pt"]


def stop_worker(root: str, run_dir: str, out: str) -> None:
    """One rank of a run where only rank 1 gets SIGTERM, during iteration 2: both stop after that step."""
    from allspark import distributed as dist_utils
    from allspark.config.loading import load_config
    from allspark.engine.loop import train
    from allspark.engine.step import Trainer
    from allspark.errors import TrainingInterrupted

    torch.set_num_threads(1)
    info = dist_utils.init_distributed("cpu")
    step = Trainer.step

    def signalled_step(self, batch_l, batch_u, use_memory):
        if info.rank == 1 and self.iteration == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, batch_l, batch_u, use_memory)

    Trainer.step = signalled_step
    cfg = load_config("demo", [f"data.root={root}", f"run_dir={run_dir}", "model.crop_size=64", "train.batch_size=2",
                               "train.epochs=2", "train.checkpoint_every=100"])
    try:
        train(cfg, progress=False)
        status = 0
    except TrainingInterrupted as err:
        status = err.exit_status
    Path(f"{out}.{info.rank}").write_text(str(status))


def eval_out_worker(weights: str, bad_out: str, out: str) -> None:
    """One rank of `allspark eval` whose --out cannot be written: each rank writes the error it ended with."""
    from allspark import distributed as dist_utils
    from allspark.engine.evaluate import run_evaluation
    from allspark.errors import InputError

    torch.set_num_threads(1)
    with dist_utils.distributed("cpu") as info:
        try:
            run_evaluation(None, weights, out=bad_out, device="cpu")
            message = "no error"
        except (InputError, OSError) as err:  # rank 0: the file system's error (cli.main's line), the others InputError
            message = str(err)
        Path(f"{out}.{info.rank}").write_text(message)


@pytest.mark.slow
def test_an_unwritable_eval_out_stops_every_rank_before_the_work(tmp_path):
    from inference_helpers import tiny_checkpoint

    weights = tiny_checkpoint(tmp_path / "ckpt")
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "result"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
               "evalout", str(weights), str(tmp_path / "file" / "eval"), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    messages = [Path(f"{out}.{rank}").read_text() for rank in (0, 1)]
    assert str(tmp_path / "file") in messages[0] and messages[1].startswith("rank 0: ") and messages[0] in messages[1]


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    from allspark.runs.checkpoints import load_checkpoint

    run, out, done = _torchrun(tmp_path, "stop")
    assert [Path(f"{out}.{rank}").read_text() for rank in (0, 1)] == ["143", "143"], done.stderr[-3000:]
    _, state = load_checkpoint(run)
    assert state["iteration"] == 3 and len(state["rng"]) == 2


def v2_worker(root: str, run_dir: str, out: str, *extra: str) -> None:
    """One rank of `method=semi recipe=unimatch_v2` (then the `extra` overrides): two student passes per step
    (labeled, then the views) under DDP, then the parameters of every rank."""
    from allspark import distributed as dist_utils
    from allspark.config.loading import load_config
    from allspark.data.loaders import build_labeled_loader, build_unlabeled_loader
    from allspark.engine.step import Trainer

    torch.set_num_threads(1)
    with dist_utils.distributed("cpu") as info:
        cfg = load_config("demo", ["method=semi", "recipe=unimatch_v2", f"data.root={root}", f"run_dir={run_dir}",
                                   "model.crop_size=64", "train.batch_size=2", *extra])
        dist_utils.seed_everything(cfg.train.seed)
        trainer = Trainer(cfg, info, total=10)
        dist_utils.seed_everything(cfg.train.seed, info.rank)
        start = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
        batch_l = next(iter(build_labeled_loader(cfg, info.rank, info.world_size)))
        batch_u = next(iter(build_unlabeled_loader(cfg, info.rank, info.world_size)))
        for _ in range(2):
            trainer.step(batch_l, batch_u, use_memory=False)
        params = dist_utils.all_gather_object({name: p.detach().clone()
                                               for name, p in trainer.model.named_parameters()})
        if info.is_main:
            Path(out).write_text(json.dumps({
                "equal": all(torch.equal(params[0][k], params[1][k]) for k in params[0]),
                "moved": any(not torch.equal(params[0][k], start[k]) for k in start)}))


@pytest.mark.slow
def test_v2_loops_two_passes_keep_the_ranks_in_step(tmp_path):
    """BatchNorm statistics stay per rank (no SyncBatchNorm on CPU); the parameters must agree."""
    _, out, done = _torchrun(tmp_path, "v2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(out.read_text()) == {"equal": True, "moved": True}


@pytest.mark.slow
def test_allspark_on_dinov2_with_the_v2_loop_keeps_the_ranks_in_step(tmp_path):
    """DINOv2 + DPT + the AllSpark module under DDP: no unused parameter, the ranks agree."""
    _, out, done = _torchrun(tmp_path, "v2vit")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(out.read_text()) == {"equal": True, "moved": True}



def test_the_context_manager_tears_down_only_the_group_it_set_up(tmp_path, monkeypatch):
    import torch.distributed as dist

    from allspark import distributed as dist_utils

    real_init = dist.init_process_group

    def one_process_group(backend, rank, world_size):  # torchrun's group, with this process as its only member
        real_init(backend, init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)

    monkeypatch.setattr(dist, "init_process_group", one_process_group)
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    with pytest.raises(RuntimeError, match="a failed step"):
        with dist_utils.distributed("cpu") as info:
            assert dist_utils.is_initialized() and info.world_size == 2
            raise RuntimeError("a failed step")
    assert not dist_utils.is_initialized()  # set up by the block, so torn down however the block ended
    real_init("gloo", init_method=f"file://{tmp_path / 'caller'}", rank=0, world_size=1)  # the caller's own group
    try:
        with dist_utils.distributed("cpu") as info:
            assert info.is_main
        assert dist_utils.is_initialized()  # left to the caller
    finally:
        dist.destroy_process_group()
    monkeypatch.setenv("WORLD_SIZE", "1")
    with dist_utils.distributed("cpu") as info:  # a single process: nothing to set up or tear down
        assert not dist_utils.is_initialized() and not info.distributed

def test_nproc_relaunches_under_torchrun(monkeypatch):
    from allspark.cli import main
    from allspark.commands import train as train_command

    calls = []

    class Child:
        def __init__(self, command):
            calls.append(command)

        def wait(self):
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # Ctrl-C reaches torchrun itself
            return 0

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(sys, "argv", ["pytest"])  # the relaunch reads main's argv, never the interpreter's
    monkeypatch.setattr(train_command.subprocess, "Popen", Child)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as code:
        main(["train", "demo", "--nproc", "2", "train.lr=0.1"])
    assert code.value.code == 0 and signal.getsignal(signal.SIGINT) == handler
    assert calls[0][1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "allspark",
                            "train", "demo", "train.lr=0.1"]


if __name__ == "__main__":
    if sys.argv[1] == "stop":
        stop_worker(*sys.argv[2:5])
    elif sys.argv[1] == "v2":
        v2_worker(*sys.argv[2:5])
    elif sys.argv[1] == "v2vit":
        v2_worker(*sys.argv[2:5], "method=allspark", "model.encoder=dinov2_small", "model.crop_size=56")
    elif sys.argv[1] == "evalout":
        eval_out_worker(*sys.argv[2:5])
    else:
        worker(*sys.argv[1:4])
