"""train.accumulate (N micro-batches per optimiser step) and train.activation_checkpointing (encoder blocks
recomputed in the backward pass): each changes memory and time, not the update, where the README says so."""
import pytest
import torch
from torch import nn

from allspark.engine.step import Trainer, micro_batches
from engine_helpers import make_cfg, make_train_data


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_train_data(tmp_path_factory.mktemp("synthetic"))


def batches(seed: int, size: int = 4):
    g = torch.Generator().manual_seed(seed)
    batch_l = {"image": torch.randn(size, 3, 64, 64, generator=g), "mask": torch.randint(0, 4, (size, 64, 64), generator=g)}
    batch_u = {"image": torch.randn(size, 3, 64, 64, generator=g), "valid": torch.ones(size, 64, 64, dtype=torch.bool)}
    return batch_l, batch_u


def trainer_with(cfg, start: dict, freeze_bn: bool) -> Trainer:
    """A Trainer from the weights `start`, dropout and drop-path off; BatchNorm kept in eval mode if `freeze_bn`."""
    trainer = Trainer(cfg, total=10)
    trainer.model.load_state_dict(start)
    for module in trainer.model.modules():
        if isinstance(module, (nn.Dropout, nn.Dropout2d)):
            module.p = 0.0
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.0
        if freeze_bn and isinstance(module, nn.BatchNorm2d):
            module.train = lambda mode=True, m=module: nn.Module.train(m, False)  # running statistics only
    return trainer


def test_micro_batches_cut_every_tensor_in_order():
    batch_l, _ = batches(0, size=6)
    parts = micro_batches({**batch_l, "name": "x"}, 3)
    assert [p["image"].shape[0] for p in parts] == [2, 2, 2] and all(p["name"] == "x" for p in parts)
    assert torch.equal(torch.cat([p["mask"] for p in parts]), batch_l["mask"])
    assert micro_batches(None, 2) == [None, None]


@pytest.mark.parametrize("method", ["sup", "semi"])
def test_n_micro_batches_of_b_equal_one_batch_of_n_b_with_batchnorm_frozen(data_root, tmp_path, method):
    # fp32: the bounds below are fp32's summation order; bf16 rounds the two batchings' activations differently
    extra = ["train.amp=off", *(["model.ablation=none"] if method == "sup" else [])]
    one = make_cfg(data_root, tmp_path / "one", method, "train.batch_size=4", *extra)
    micro = make_cfg(data_root, tmp_path / "micro", method, "train.batch_size=2", "train.accumulate=2", *extra)
    torch.manual_seed(0)  # the start weights, whatever ran before in this worker
    start = Trainer(one, total=10).model.state_dict()
    results = {}
    for name, cfg in (("one", one), ("micro", micro)):
        trainer = trainer_with(cfg, start, freeze_bn=True)
        records = [trainer.step(*batches(seed), use_memory=False) for seed in range(2)]
        results[name] = records, {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    (records_one, weights_one), (records_micro, weights_micro) = results["one"], results["micro"]
    assert [r["loss"] for r in records_micro] == pytest.approx([r["loss"] for r in records_one], rel=1e-5)
    moved = max((weights_one[k] - start[k]).abs().max().item() for k in weights_one)
    worst = max((weights_one[k] - weights_micro[k]).abs().max().item() for k in weights_one)
    # float32 summation order alone leaves up to ~4e-4 of the step (seen in CI); a wrong accumulation (a loss not
    # divided by N, a micro-batch dropped) is off by a large share of it
    assert moved > 1e-4 and worst < 1e-2 * moved


def one_step_each(data_root, tmp_path, method: str, freeze_bn: bool) -> tuple[dict, Trainer, Trainer]:
    """(initial state, trainer after one step on a batch of 4, trainer after one step of 2 micro-batches of 2)."""
    one = make_cfg(data_root, tmp_path / "one", method, "train.batch_size=4")
    micro = make_cfg(data_root, tmp_path / "micro", method, "train.batch_size=2", "train.accumulate=2")
    start = Trainer(one, total=10).model.state_dict()
    trainers = [trainer_with(cfg, start, freeze_bn) for cfg in (one, micro)]
    for trainer in trainers:
        trainer.step(*batches(0), use_memory=False)
    return start, *trainers


def test_batchnorm_statistics_are_per_micro_batch(data_root, tmp_path):
    _, one, micro = one_step_each(data_root, tmp_path, "semi", freeze_bn=False)
    stats = [trainer.model.state_dict()["head.fuse_bn.running_mean"] for trainer in (one, micro)]
    assert not torch.allclose(*stats)  # two updates of micro-batch statistics, not one of the batch


def test_the_memory_after_micro_batches_equals_the_whole_batchs(data_root, tmp_path):
    """The memory is written micro-batch after micro-batch in batch order, so it ends as the whole batch's write
    (per-image teacher, BatchNorm frozen); only what the labeled branch reads in between differs."""
    start, one, micro = one_step_each(data_root, tmp_path, "allspark", freeze_bn=True)
    (queue_one, ptr_one), (queue_micro, ptr_micro) = [(t.model.allspark.memory.queue, t.model.allspark.memory.ptr)
                                                      for t in (one, micro)]
    assert torch.equal(ptr_one, ptr_micro) and not torch.equal(ptr_one, start["allspark.memory.ptr"])
    assert torch.allclose(queue_one, queue_micro, atol=1e-5)


@pytest.mark.parametrize("method", ["sup", "allspark"])
def test_activation_checkpointing_changes_no_update(data_root, tmp_path, method):
    """Dropout and drop-path stay on: the recomputation replays their masks."""
    extra = ["model.ablation=none"] if method == "sup" else []
    plain = make_cfg(data_root, tmp_path / "plain", method, *extra)
    recomputed = make_cfg(data_root, tmp_path / "ckpt", method, "train.activation_checkpointing=true", *extra)
    start = Trainer(plain, total=10).model.state_dict()
    weights = []
    for cfg in (plain, recomputed):
        trainer = Trainer(cfg, total=10)
        trainer.model.load_state_dict(start)
        torch.manual_seed(0)
        trainer.step(*batches(0, size=2), use_memory=False)
        weights.append({k: v.detach().clone() for k, v in trainer.model.named_parameters()})
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-6) for k in weights[0])
    checkpointed = [m for m in trainer.model.encoder.modules() if getattr(m, "gradient_checkpointing", False)]
    assert len(checkpointed) == 8  # MiT-B0: 2 blocks in each of 4 stages
