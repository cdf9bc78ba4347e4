"""Engine building blocks pinned against plain references: losses, poly lr, param groups, IoU, state file."""
import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from allspark import distributed as dist_utils
from allspark.config.loading import load_config
from allspark.config.schema import AMP_MODES, TrainConfig
from allspark.precision import AMP_DTYPES, autocast
from allspark.engine.losses import ohem_loss, ohem_mask, unlabeled_loss, ce_loss
from allspark.engine.metrics import ConfusionMatrix, format_iou_table
from allspark.engine.optim import build_optimizer, poly_factor, poly_schedule
from allspark.runs.checkpoints import load_checkpoint, save_checkpoint
from allspark.runs.folder import RunFolder
from allspark.runs.metrics import MetricsWriter, read_metrics, truncate_metrics


def test_ce_ignores_255():
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, :2] = 255
    keep = target != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], target[keep])
    assert torch.allclose(ce_loss(logits, target), expected)


def test_unlabeled_loss_skips_padding():
    logits = torch.randn(1, 3, 4, 4)
    pseudo = torch.randint(0, 3, (1, 4, 4))
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    valid[..., 2:] = False
    expected = F.cross_entropy(logits[..., :2], pseudo[..., :2])
    assert torch.allclose(unlabeled_loss(logits, pseudo, valid), expected)


def test_ohem_mask_threshold_and_min_kept():
    probs = torch.tensor([0.1, 0.5, 0.8, 0.9, 0.95, 0.3])
    valid = torch.tensor([True, True, True, True, True, False])
    assert ohem_mask(probs, valid, 0.7, 0).tolist() == [True, True, False, False, False, False]
    # at least 4 valid pixels: the 4 hardest (lowest GT probability) are kept
    assert ohem_mask(probs, valid, 0.7, 4).tolist() == [True, True, True, True, False, False]
    # more than the valid count: every valid pixel
    assert ohem_mask(probs, valid, 0.7, 100).tolist() == [True] * 5 + [False]


def test_ohem_loss_matches_reference():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    target = torch.randint(0, 4, (2, 8, 8))
    target[1, 0] = 255
    flat_logits = logits.permute(0, 2, 3, 1).reshape(-1, 4)
    flat_target = target.flatten()
    valid = flat_target != 255
    p_gt = flat_logits.softmax(1)[valid].gather(1, flat_target[valid][:, None]).squeeze(1)
    losses = F.cross_entropy(flat_logits[valid], flat_target[valid], reduction="none")
    threshold = max(0.7, float(p_gt.sort().values[49]))
    expected = losses[p_gt <= threshold].mean()
    assert torch.allclose(ohem_loss(logits, target, 0.7, 50), expected)


def test_poly_lr_set_before_step_and_groups():
    model = nn.Module()
    model.encoder = nn.Linear(2, 2)
    model.head = nn.Linear(2, 2)
    opt = build_optimizer(model, TrainConfig(lr=0.01, lr_multi=10.0))
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2]
    schedule = poly_schedule(opt, 100)
    assert [g["lr"] for g in opt.param_groups] == [0.01, pytest.approx(0.1)]  # iteration 0 runs at the full lr
    for _ in range(50):
        opt.step()
        schedule.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 ** 0.9)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.1 * 0.5 ** 0.9)
    resumed = poly_schedule(opt, 100, start=50)  # a resumed run: the same lr at the same step
    assert resumed.last_epoch == 50 and opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_factor(100, 100) == 0.0
    assert (opt.defaults["momentum"], opt.defaults["weight_decay"]) == (0.9, 1e-4)


def test_confusion_matrix_iou():
    cm = ConfusionMatrix(3)
    target = torch.tensor([[0, 0, 1, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 1, 2]])
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    iou = cm.iou()
    assert iou[:2].tolist() == pytest.approx([1 / 2, 2 / 3])
    assert math.isnan(iou[2])  # class 2 absent from ground truth and prediction: left out of the mean
    assert cm.miou() == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert "mIoU" in format_iou_table(iou.tolist(), ["a", "b", "c"], cm.miou())
    with pytest.raises(ValueError, match="class 3"):
        cm.update(torch.zeros(1, 1, dtype=torch.long), torch.tensor([[3]]))


def test_rng_state_roundtrip():
    dist_utils.seed_everything(3)
    state = dist_utils.get_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    dist_utils.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_state_file_loads_with_weights_only(tmp_path):
    cfg = load_config("demo", [f"run_dir={tmp_path}"])
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"epoch": 1, "epoch_iter": 2, "iteration": 7, "best_miou": 0.5, "optimizer": opt.state_dict(),
             "rng": [dist_utils.get_rng_state()]}
    save_checkpoint(tmp_path, model.state_dict(), cfg, state)
    weights, state_path = RunFolder(tmp_path).weights(), RunFolder(tmp_path).state()
    raw = torch.load(state_path, weights_only=True)
    assert raw["iteration"] == 7
    model_state, loaded = load_checkpoint(tmp_path)
    assert torch.equal(model_state["weight"], model.weight)
    assert torch.equal(loaded["optimizer"]["state"][0]["momentum_buffer"], opt.state_dict()["state"][0]["momentum_buffer"])
    assert not list(tmp_path.glob("checkpoints/*.tmp"))
    state["iteration"] = 8  # a state file newer than its weights: caught, not silently mixed
    torch.save(state, state_path)
    with pytest.raises(ValueError, match="latest.safetensors is of iteration 7, latest.state.pt of 8"):
        load_checkpoint(tmp_path)


def test_metrics_writer_and_truncate(tmp_path):
    writer = MetricsWriter(tmp_path, ["a", "b"])
    writer.write({"split": "train", "iter": 5, "epoch": 0, "loss": 1.0, "lr": 0.1})
    writer.write({"split": "val", "iter": 10, "epoch": 1, "miou": 0.5, "iou": [0.5, float("nan")]})
    writer.close()
    records = read_metrics(tmp_path)
    assert records[1]["iou"] == [0.5, None]
    json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[1])
    assert list((tmp_path / "tb").iterdir())
    truncate_metrics(tmp_path, 5)
    assert [r["iter"] for r in read_metrics(tmp_path)] == [5]
    assert read_metrics(tmp_path / "metrics.jsonl") == read_metrics(tmp_path)


def test_metrics_of_a_run_without_them(tmp_path):
    """One reader for training, resume and `viz curves`: a missing file is an error naming it; truncating a run
    that has none yet (a fresh start) writes nothing."""
    truncate_metrics(tmp_path, 0)
    assert not (tmp_path / "metrics.jsonl").exists()
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        read_metrics(tmp_path)


def test_every_amp_mode_has_its_dtype_and_autocast():
    assert ("auto", *AMP_DTYPES) == AMP_MODES  # auto is resolved to one of them before any autocast
    with autocast(torch.device("cpu"), "bf16"):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "off"):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32
