"""What a run logs besides the losses: the share of unlabeled pixels the threshold keeps, the step time, and the EMA
teacher's validation mIoU beside the student's, with `best` following the one `train.best_of` names."""
import pytest
import torch
from safetensors import safe_open
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from allspark.config.loading import load_config
from allspark.engine.loop import train
from allspark.engine.recipes import confident_share
from allspark.engine.step import Trainer
from allspark.errors import ConfigError
from allspark.precision import autocast
from allspark.runs.checkpoints import load_checkpoint
from allspark.runs.metrics import read_metrics
from allspark.runs.weights_file import read_weights
from engine_helpers import make_cfg, make_train_data


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_train_data(tmp_path_factory.mktemp("synthetic"))


def test_confident_share_counts_valid_pixels_at_or_above_the_threshold():
    probs = torch.tensor([[0.9, 0.6, 0.75, 0.95], [0.1, 0.4, 0.25, 0.05]])  # (K=2, 4 pixels): top 0.9 0.6 0.75 0.95
    logits = probs.log().view(1, 2, 2, 2)
    valid = torch.tensor([True, True, True, False]).view(1, 2, 2)
    assert confident_share(logits, valid, 0.75).item() == pytest.approx(2 / 3)  # 0.9 and 0.75 of three valid
    assert confident_share(logits, valid, 0.0).item() == 1.0
    assert confident_share(logits, torch.zeros_like(valid), 0.5).item() == 0.0


def test_step_reports_the_share_of_the_teachers_view_and_sup_none(data_root, tmp_path):
    cfg = make_cfg(data_root, tmp_path, "semi", "recipe.threshold=0.4")
    trainer = Trainer(cfg, total=4)
    g = torch.Generator().manual_seed(0)
    images_u = torch.randn(2, 3, 64, 64, generator=g)
    valid = torch.ones(2, 64, 64, dtype=torch.bool)
    valid[:, :, 40:] = False  # padding
    trainer.model.eval()
    with torch.no_grad(), autocast(trainer.device, trainer.amp):  # the teacher's pass in the run's precision
        expected = confident_share(trainer.model(images_u), valid, 0.4).item()
    batch_l = {"image": torch.randn(2, 3, 64, 64, generator=g), "mask": torch.randint(0, 4, (2, 64, 64), generator=g)}
    record = trainer.step(batch_l, {"image": images_u, "valid": valid}, use_memory=False)
    assert record["mask_ratio"] == pytest.approx(expected, abs=1e-6)
    assert 0.0 < expected < 1.0  # the threshold splits this teacher's pixels, so a wrong count would show
    sup = Trainer(make_cfg(data_root, tmp_path / "sup", "sup", "model.ablation=none"), total=4)
    assert "mask_ratio" not in sup.step(batch_l, None, use_memory=False)


@pytest.mark.parametrize("best_of", ["student", "ema"])
def test_ema_teacher_is_evaluated_and_best_follows_train_best_of(data_root, tmp_path, best_of):
    cfg = make_cfg(data_root, tmp_path / "run", "allspark", "train.epochs=1", "recipe.teacher=ema",
                   "recipe.ema_momentum=0.5", "recipe.threshold=0.3", f"train.best_of={best_of}")
    result = train(cfg, progress=False)
    records = read_metrics(tmp_path / "run")
    steps = [r for r in records if r["split"] == "train"]
    assert len(steps) == 4 and all(r["step_time"] > 0 and 0 <= r["mask_ratio"] <= 1 for r in steps)
    (val,) = [r for r in records if r["split"] == "val"]
    assert len(val["iou"]) == len(val["iou_ema"]) == 4
    followed = val["miou_ema" if best_of == "ema" else "miou"]
    assert result["best_miou"] == result["miou"] == followed
    best, _ = read_weights(tmp_path / "run" / "checkpoints" / "best.safetensors")
    model, state = load_checkpoint(tmp_path / "run")
    expected = state["ema"] if best_of == "ema" else model  # the EMA's averaged tensors, or the student's
    assert all(torch.equal(best[name], tensor) for name, tensor in expected.items())
    assert not all(torch.equal(model[name], tensor) for name, tensor in state["ema"].items())  # they differ
    with safe_open(str(tmp_path / "run" / "checkpoints" / "best.safetensors"), "pt") as f:
        assert f.metadata()["best_of"] == best_of and float(f.metadata()["miou"]) == pytest.approx(followed, abs=1e-6)
    events = EventAccumulator(str(tmp_path / "run" / "tb")).Reload()
    assert {"train/mask_ratio", "train/step_time", "val/miou", "val/miou_ema"} <= set(events.Tags()["scalars"])


def test_best_of_ema_needs_an_ema_teacher():
    load_config("demo", ["recipe.teacher=ema", "train.best_of=ema"])
    with pytest.raises(ConfigError, match="'train.best_of' is 'ema' but recipe.teacher is 'student'") as err:
        load_config("demo", ["train.best_of=ema"])
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="'train.best_of'"):
        load_config("demo", ["train.best_of=teacher"])
