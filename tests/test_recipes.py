"""The recipe switches: the defaults are the paper's loop step for step; each switch changes its own part and
nothing else (views, CutMix, threshold, weight, EMA teacher); every recipe trains and resumes exactly."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from allspark.config.loading import load_config
from allspark.config.schema import RecipeConfig
from allspark.data.loaders import build_labeled_loader, build_unlabeled_loader
from allspark.data.normalize import normalize_image
from allspark.data.transforms import TrainTransform
from allspark.data.views import BOX_AREA, UnlabeledViews, cutmix_box
from allspark.engine.optim import build_optimizer, poly_factor
from allspark.engine.recipes import EmaTeacher, cutmix, pseudo_label_loss, rampup_factor, student_views
from allspark.engine.step import Trainer
from allspark.errors import ConfigError
from allspark.models.allspark import SemanticMemory
from allspark.presets import list_presets
from allspark.runs.checkpoints import load_checkpoint
from allspark.runs.metrics import read_metrics
from allspark.runs.run_config import config_diff
from engine_helpers import make_cfg, make_train_data, train_until

FULL = ["recipe.strong_views=true", "recipe.cutmix_prob=0.5", "recipe.threshold=0.3", "recipe.teacher=ema",
        "recipe.ema_momentum=0.9", "recipe.unlabeled_weight=1.5"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_train_data(tmp_path_factory.mktemp("synthetic"))


def _batches(cfg):
    return next(iter(build_labeled_loader(cfg))), next(iter(build_unlabeled_loader(cfg)))


def _trainer(cfg, seed=0):
    torch.manual_seed(seed)
    return Trainer(cfg, total=10)


def _run_steps(trainer, batch_l, batch_u, steps, use_memory):
    torch.manual_seed(1)  # dropout
    return [trainer.step(batch_l, batch_u, use_memory) for _ in range(steps)]


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _paper_loop(model, cfg, batch_l, batch_u, steps, use_memory):
    """METHODS.md 2 written plainly: teacher = the student in eval mode on the same images, argmax pseudo-labels,
    (CE_l + CE_u) / 2 with padding ignored, SGD with the poly lr set first."""
    optimizer = build_optimizer(model, cfg.train)
    base = [group["lr"] for group in optimizer.param_groups]
    torch.manual_seed(1)
    losses = []
    for i in range(steps):
        for group, lr in zip(optimizer.param_groups, base):
            group["lr"] = lr * poly_factor(i, 10)
        model.eval()
        with torch.no_grad():
            teacher = model(batch_u["image"]).float()
        model.train()
        logits_l, logits_u = model(batch_l["image"], images_u=batch_u["image"], teacher_logits_u=teacher,
                                   use_memory=use_memory)
        loss_l = F.cross_entropy(logits_l.float(), batch_l["mask"], ignore_index=255)
        loss_u = F.cross_entropy(logits_u.float(), teacher.argmax(1).masked_fill(~batch_u["valid"], 255),
                                 ignore_index=255)
        loss = (loss_l + loss_u) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append((loss.item(), loss_l.item(), loss_u.item()))
    return losses


@pytest.mark.parametrize("method", ["semi", "allspark"])
def test_default_recipe_is_the_papers_loop_step_for_step(data_root, tmp_path, method):
    explicit = ["recipe.strong_views=false", "recipe.cutmix_prob=0", "recipe.threshold=0",
                "recipe.unlabeled_weight=1", "recipe.teacher=student"]
    fp32 = "train.amp=off"  # the plain reference below runs without autocast
    cfg = make_cfg(data_root, tmp_path, method, *explicit, fp32)
    assert cfg == make_cfg(data_root, tmp_path, method, fp32)  # the explicit values are the defaults
    batch_l, batch_u = _batches(cfg)
    assert set(batch_u) == {"image", "valid"}  # no extra views are even loaded
    trainer = _trainer(cfg)
    start = _weights(trainer.model)
    records = _run_steps(trainer, batch_l, batch_u, 4, use_memory=method == "allspark")

    reference = _trainer(cfg).model
    reference.load_state_dict(start)
    expected = _paper_loop(reference, cfg, batch_l, batch_u, 4, use_memory=method == "allspark")
    assert [(r["loss"], r["loss_l"], r["loss_u"]) for r in records] == expected
    for key, value in reference.state_dict().items():
        assert torch.equal(value, trainer.model.state_dict()[key]), key


def test_strong_views_keep_the_weak_view_and_its_geometry(data_root, tmp_path):
    plain, strong = (next(iter(build_unlabeled_loader(make_cfg(data_root, tmp_path, "semi", *extra))))
                     for extra in ([], ["recipe.strong_views=true"]))
    assert set(strong) == {"image", "valid", "strong"}
    assert torch.equal(plain["image"], strong["image"]) and torch.equal(plain["valid"], strong["valid"])
    assert not torch.equal(strong["strong"], strong["image"])

    image = np.full((48, 60, 3), 220, np.uint8)
    image[:, :18] = 40  # a dark band on the left: flips and crops move it
    transform, views = TrainTransform(40, colour=False), UnlabeledViews(40, strong=True, cutmix_prob=0)
    changed = 0
    for seed in range(20):
        transform.reseed(seed)
        views.reseed(seed)
        weak, carried = transform(image)
        strong_view = views(weak)["strong"].mean(0)  # (S, S), grey in, grey out
        valid = torch.from_numpy(carried != 255)
        dark = torch.from_numpy(weak[..., 0] < 128) & valid
        bright = torch.from_numpy(weak[..., 0] >= 128) & valid
        if dark.any() and bright.any():  # colour ops are monotone on grey: the band stays where it is, darker
            assert strong_view[dark].mean() < strong_view[bright].mean() - 0.3, seed
        changed += int(not torch.equal(views(weak)["strong"], normalize_image(weak)))
    assert changed >= 10


def test_views_depend_on_the_seed_alone():
    weak = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    views = UnlabeledViews(32, strong=True, cutmix_prob=0.5)
    outputs = []
    for seed in (7, 8, 7):
        views.reseed(seed)
        outputs.append(views(weak))
    assert all(torch.equal(outputs[0][k], outputs[2][k]) for k in ("strong", "box"))
    assert not torch.equal(outputs[0]["strong"], outputs[1]["strong"])


def test_cutmix_box_shape_and_probability():
    rng = np.random.default_rng(0)
    boxes = [cutmix_box(64, 0.5, rng) for _ in range(300)]
    kept = [box for box in boxes if box.any()]
    assert 0.4 < len(kept) / len(boxes) < 0.6
    for box in kept:
        rows, cols = box.any(1).nonzero().squeeze(1), box.any(0).nonzero().squeeze(1)
        assert box.sum() == len(rows) * len(cols)  # one rectangle
        assert (rows.diff() == 1).all() and (cols.diff() == 1).all()
        assert box.sum() <= 64 * 64 * BOX_AREA[1] * 1.1
    assert not any(cutmix_box(64, 0.0, rng).any() for _ in range(20))
    assert all(cutmix_box(64, 1.0, rng).any() for _ in range(20))


def test_cutmix_carries_pseudo_labels_confidence_and_ignore_mask():
    torch.manual_seed(0)
    b, k, s = 3, 4, 16
    box = torch.zeros(b, s, s, dtype=torch.bool)
    box[0, 2:9, 3:7] = True
    box[2, 10:, :5] = True  # sample 2 takes from sample 0; sample 1 has no box
    batch = {"image": torch.randn(b, 3, s, s), "strong": torch.randn(b, 3, s, s), "box": box,
             "valid": torch.rand(b, s, s) > 0.3}
    logits = torch.randn(b, k, s, s)
    images, mixed, valid = student_views(batch, logits)
    source = [1, 2, 0]  # the sample each one's box reads from
    for i in range(b):
        inside, outside = box[i], ~box[i]
        for got, x in ((images, batch["strong"]), (mixed, logits), (valid, batch["valid"])):
            assert torch.equal(got[i][..., inside], x[source[i]][..., inside])
            assert torch.equal(got[i][..., outside], x[i][..., outside])
    pseudo, confidence = mixed.argmax(1), mixed.softmax(1).amax(1)
    assert torch.equal(pseudo, cutmix(logits.argmax(1), box))
    assert torch.equal(confidence, cutmix(logits.softmax(1).amax(1), box))
    assert student_views({k: v for k, v in batch.items() if k != "box"}, logits)[0] is batch["strong"]


def test_threshold_leaves_out_unconfident_and_padded_pixels():
    torch.manual_seed(0)
    teacher = torch.randn(2, 5, 8, 8) * 3
    valid = torch.rand(2, 8, 8) > 0.2
    logits = torch.randn(2, 5, 8, 8, requires_grad=True)
    loss = pseudo_label_loss(logits, teacher, valid, threshold=0.6)
    confidence, pseudo = teacher.softmax(1).max(1)
    keep = valid & (confidence >= 0.6)
    assert 0 < keep.sum() < valid.sum()
    by_hand = -logits.log_softmax(1).gather(1, pseudo[:, None]).squeeze(1)[keep].sum() / valid.sum()
    torch.testing.assert_close(loss, by_hand, rtol=1e-6, atol=0)
    loss.backward()
    assert (logits.grad.abs().sum(1)[~keep] == 0).all() and (logits.grad.abs().sum(1)[keep] > 0).all()
    paper = F.cross_entropy(logits, pseudo.masked_fill(~valid, 255), ignore_index=255)
    assert torch.equal(pseudo_label_loss(logits, teacher, valid, threshold=0.0), paper)


def _losses(cfg, batch_l, batch_u):
    trainer = _trainer(cfg)
    torch.manual_seed(1)
    return {k: v.item() for k, v in trainer.losses(batch_l, batch_u, use_memory=True).items()}


def test_weight_and_threshold_change_only_the_unlabeled_term(data_root, tmp_path):
    cfg = make_cfg(data_root, tmp_path)
    batch_l, batch_u = _batches(cfg)
    base = _losses(cfg, batch_l, batch_u)
    weighted = _losses(make_cfg(data_root, tmp_path, "allspark", "recipe.unlabeled_weight=0.25"), batch_l, batch_u)
    assert (weighted["loss_l"], weighted["loss_u"]) == (base["loss_l"], base["loss_u"])
    assert weighted["loss"] == pytest.approx((base["loss_l"] + 0.25 * base["loss_u"]) / 2, rel=1e-6)
    strict = _losses(make_cfg(data_root, tmp_path, "allspark", "recipe.threshold=0.5"), batch_l, batch_u)
    assert strict["loss_l"] == base["loss_l"] and strict["loss_u"] < base["loss_u"]


def test_strong_views_and_cutmix_change_only_what_the_student_sees(data_root, tmp_path, monkeypatch):
    seen = []
    forward = Trainer.losses

    def spy(self, batch_l, batch_u, use_memory):
        calls = []
        teacher, student = self.teacher, self.student
        self.teacher = lambda images: calls.append(("teacher", images)) or teacher(images)
        self.student = lambda *args, **kw: calls.append(("student", kw["images_u"])) or student(*args, **kw)
        try:
            out = forward(self, batch_l, batch_u, use_memory)
        finally:
            self.teacher, self.student = teacher, student
        seen.append(dict(calls))
        return out

    monkeypatch.setattr(Trainer, "losses", spy)
    for extra in ([], ["recipe.strong_views=true"], ["recipe.cutmix_prob=1"]):
        cfg = make_cfg(data_root, tmp_path, "allspark", *extra)
        batch_l, batch_u = _batches(cfg)
        _losses(cfg, batch_l, batch_u)
    plain, strong, mixed = seen
    assert torch.equal(plain["teacher"], strong["teacher"]) and torch.equal(plain["teacher"], mixed["teacher"])
    assert plain["student"] is plain["teacher"]  # the paper: one view
    assert not torch.equal(strong["student"], strong["teacher"])
    assert not torch.equal(mixed["student"], mixed["teacher"])


def test_ema_teacher_follows_the_ramp_then_leaves_the_student(data_root, tmp_path):
    """m_i = min(m, i / (i + 1)): after step 0 the teacher is the student, after step 1 their mean; so the first
    two steps equal the paper's loop and the third does not."""
    cfg = make_cfg(data_root, tmp_path)
    batch_l, batch_u = _batches(cfg)
    paper = _run_steps(_trainer(cfg), batch_l, batch_u, 3, use_memory=True)
    ema_trainer = _trainer(make_cfg(data_root, tmp_path, "allspark", "recipe.teacher=ema"))
    ema = _run_steps(ema_trainer, batch_l, batch_u, 3, use_memory=True)
    assert ema[:2] == paper[:2] and ema[2]["loss_u"] != paper[2]["loss_u"]
    assert ema_trainer.ema.momentum_at(0) == 0 and ema_trainer.ema.momentum_at(1) == 0.5
    assert ema_trainer.ema.momentum_at(10_000) == 0.999


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear, self.norm, self.memory = nn.Linear(2, 3), nn.BatchNorm1d(3), SemanticMemory(2, 3, 4)


def _dyadic(model, scale):
    """Parameters and BN statistics set to multiples of 1/8, so the EMA's products and sums are exact."""
    with torch.no_grad():
        for i, tensor in enumerate(list(model.parameters()) + [model.norm.running_mean, model.norm.running_var]):
            tensor.copy_(torch.arange(tensor.numel(), dtype=torch.float32).view_as(tensor) * scale / 8 + i)


def test_ema_update_is_exact():
    student = _Tiny()
    _dyadic(student, 1)
    ema = EmaTeacher(student, momentum=0.75)
    teacher = ema.model
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    _dyadic(student, 3)
    student.norm.num_batches_tracked += 5
    student.memory.queue.add_(1)
    ema.update(student, iteration=7)  # momentum min(0.75, 7/8) = 0.75
    now, s = {k: v.clone() for k, v in teacher.state_dict().items()}, student.state_dict()
    averaged = ["linear.weight", "linear.bias", "norm.weight", "norm.bias", "norm.running_mean", "norm.running_var"]
    assert sorted(ema.names) == sorted(averaged)
    for name in averaged:
        assert torch.equal(now[name], 0.75 * before[name] + 0.25 * s[name]), name
    for name in ("norm.num_batches_tracked", "memory.queue", "memory.ptr"):  # never read by the teacher
        assert torch.equal(now[name], before[name]), name
    ema.update(student, iteration=1)  # the ramp: momentum 1/2
    assert torch.equal(teacher.linear.weight, 0.5 * now["linear.weight"] + 0.5 * s["linear.weight"])
    ema.update(student, iteration=0)  # momentum 0: the student itself
    assert all(torch.equal(teacher.state_dict()[n], s[n]) for n in averaged)

    saved = ema.state_dict()
    restored = EmaTeacher(_Tiny(), momentum=0.75)
    restored.load_state_dict(student, saved)
    assert all(torch.equal(restored.model.state_dict()[n], saved[n]) for n in averaged)
    assert torch.equal(restored.model.memory.queue, student.memory.queue)


@pytest.mark.parametrize("method, ablation, extra, workers", [
    ("allspark", "full", FULL, 2),
    ("semi", "none", FULL, 0),
    ("allspark", "cca", FULL, 0),
    ("allspark", "cca_mem", FULL, 0),
    ("allspark", "full", ["recipe.teacher=ema"], 0),
    ("allspark", "full", ["recipe.strong_views=true"], 0),
    ("allspark", "full", ["recipe.cutmix_prob=0.7", "recipe.threshold=0.5"], 0),
])
def test_every_recipe_trains_and_resumes_exactly(data_root, tmp_path, monkeypatch, method, ablation, extra, workers):
    """Stopped at iteration 7, resumed from the checkpoint at 6: the same losses as an uninterrupted run, the
    same final weights and EMA teacher."""
    def cfg(name):
        return make_cfg(data_root, tmp_path / name, method, f"model.ablation={ablation}", f"data.workers={workers}",
                        *extra)

    train_until(cfg("whole"), monkeypatch)
    train_until(cfg("parts"), monkeypatch, stop_at=7)
    assert load_checkpoint(tmp_path / "parts")[1]["iteration"] == 6
    train_until(cfg("parts"), monkeypatch)

    def losses(run):
        return [(r["iter"], r["loss"], r["loss_l"], r["loss_u"]) for r in read_metrics(run) if r["split"] == "train"]

    assert len(losses(tmp_path / "whole")) == 8 and losses(tmp_path / "parts") == losses(tmp_path / "whole")
    whole_model, whole = load_checkpoint(tmp_path / "whole")
    parts_model, parts = load_checkpoint(tmp_path / "parts")
    assert all(torch.equal(whole_model[k], parts_model[k]) for k in whole_model)
    assert ("ema" in whole) == ("recipe.teacher=ema" in extra)
    assert all(torch.equal(whole["ema"][k], parts["ema"][k]) for k in whole.get("ema", {}))


def test_rampup_follows_mean_teachers_curve_then_stays_at_one():
    assert rampup_factor(0, 0) == rampup_factor(10**6, 0) == 1.0
    assert rampup_factor(0, 100) == pytest.approx(math.exp(-5))
    assert rampup_factor(50, 100) == pytest.approx(math.exp(-1.25))
    assert rampup_factor(100, 100) == rampup_factor(101, 100) == 1.0
    factors = [rampup_factor(i, 100) for i in range(101)]
    assert factors == sorted(factors)


def test_rampup_scales_only_the_unlabeled_term_by_the_step(data_root, tmp_path):
    cfg = make_cfg(data_root, tmp_path, "allspark", "recipe.rampup_iters=8")
    batch_l, batch_u = _batches(cfg)
    trainer = _trainer(cfg)
    for step in (0, 4, 8):
        trainer.scheduler.last_epoch = step
        torch.manual_seed(1)
        terms = {k: v.item() for k, v in trainer.losses(batch_l, batch_u, use_memory=True).items()}
        expected = (terms["loss_l"] + rampup_factor(step, 8) * terms["loss_u"]) / 2
        assert terms["loss"] == pytest.approx(expected, rel=1e-6)
        assert terms["loss_u"] > 0


@pytest.mark.parametrize("override, key", [
    ("recipe.rampup_iters=-1", "recipe.rampup_iters"),
    ("recipe.threshold=1.5", "recipe.threshold"),
    ("recipe.cutmix_prob=-0.1", "recipe.cutmix_prob"),
    ("recipe.ema_momentum=2", "recipe.ema_momentum"),
    ("recipe.unlabeled_weight=-1", "recipe.unlabeled_weight"),
    ("recipe.teacher=mean", "recipe.teacher"),
    ("recipe.strong_views=1", "recipe.strong_views"),
    ("recipe.strength=3", "recipe.strength"),
])
def test_bad_recipe_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'") as err:
        load_config("demo", [override])
    assert "\n" not in str(err.value)


def test_sup_refuses_a_recipe():
    load_config("demo", ["method=sup", "model.ablation=none"])
    with pytest.raises(ConfigError, match="'recipe.teacher' has no effect for method 'sup'"):
        load_config("demo", ["method=sup", "model.ablation=none", "recipe.teacher=ema"])


def test_recipe_presets_change_only_the_recipe():
    """Each AllSpark protocol's `recipe` preset is its `allspark` preset plus one recipe shared by the protocol's
    splits; every other preset keeps the paper's loop (UniMatch V2's presets run its own, test_config)."""
    names = {name for name in list_presets() if not name.startswith("unimatch_v2/")}
    siblings = {name: name.rsplit("/", 1)[0] + "/allspark" for name in names if name.endswith("/recipe")}
    siblings["demo_recipe"] = "demo"
    assert {name.rsplit("/", 1)[0] + "/recipe" for name in names if name.endswith("/allspark")} <= set(siblings)
    by_family = {}
    for name, sibling in siblings.items():
        cfg, paper = load_config(name), load_config(sibling)
        assert {line.split(":")[0].rsplit(".", 1)[0] for line in config_diff(paper, cfg)} == {"recipe", "run_dir"}
        assert "allspark" in cfg.run_dir and cfg.run_dir != paper.run_dir
        by_family.setdefault(name.split("/")[0], set()).add(str(cfg.recipe))
    assert all(len(recipes) == 1 for recipes in by_family.values()), by_family
    assert all(load_config(name).recipe == RecipeConfig() for name in names - set(siblings))
