"""UniMatch V2's loop as recipe switches (README, recipes; METHODS.md): two strong views with their own boxes,
the mirrored CutMix partner, complementary channel dropout, AdamW with the poly lr set after the step, the EMA
ratio; `recipe: unimatch_v2` turns them all on, and with method sup gives the release's supervised.py."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from allspark.config.loading import load_config
from allspark.config.schema import RecipeConfig
from allspark.data.loaders import build_labeled_loader, build_unlabeled_loader
from allspark.data.views import UnlabeledViews
from allspark.engine import step as step_module
from allspark.engine.optim import poly_factor
from allspark.engine.recipes import complementary_masks, cutmix, student_views
from allspark.engine.step import Trainer
from allspark.errors import ConfigError
from allspark.presets import RECIPES
from engine_helpers import make_cfg, make_train_data, train_until

V2 = ["recipe=unimatch_v2", "recipe.cutmix_prob=1"]  # every view with a box, so the boxes are tested
EXACT = ["train.amp=off", "train.optimizer_kernel=exact"]  # the release's fp32 and optimiser kernel


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_train_data(tmp_path_factory.mktemp("synthetic"))


def _batches(cfg):
    return next(iter(build_labeled_loader(cfg))), next(iter(build_unlabeled_loader(cfg)))


def test_complementary_masks_pair_the_two_views():
    pairs, channels = 7, 64
    masks = complementary_masks(pairs, channels, torch.Generator().manual_seed(0))
    assert masks.shape == (2 * pairs, channels)
    first, second = masks[:pairs], masks[pairs:]
    assert torch.equal(first + second, torch.full_like(first, 2.0))  # each channel's two views add up to 2
    whole = (first == 1).all(1)
    assert int(whole.sum()) == pairs // 2  # half the images (rounded down) keep both views whole
    dropped = first[~whole]
    assert set(dropped.unique().tolist()) == {0.0, 2.0}  # the others: 2 in one view, 0 in the other
    assert 0.3 < (dropped == 2).float().mean() < 0.7  # a fair coin per channel
    again = complementary_masks(pairs, channels, torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)
    assert not torch.equal(masks, complementary_masks(pairs, channels, torch.Generator().manual_seed(1)))


def test_channel_masks_scale_only_the_unlabeled_rows_encoder_features(data_root, tmp_path):
    cfg = make_cfg(data_root, tmp_path, "semi")
    torch.manual_seed(0)
    model = Trainer(cfg, total=10).model.eval()
    images = torch.randn(4, 3, 64, 64)
    widest = max(model.encoder.channels)
    ones = torch.ones(2, widest)
    plain = model(images[:2], images_u=images[2:])
    assert all(torch.equal(a, b) for a, b in zip(plain, model(images[:2], images_u=images[2:], channel_masks=ones)))
    zeros = torch.zeros(2, widest)
    logits_l, logits_u = model(images[:2], images_u=images[2:], channel_masks=zeros)
    assert torch.equal(logits_l, plain[0])  # eval mode: the labeled rows are untouched
    head_only = model._decode([torch.zeros_like(f[2:]) for f in model.encoder(images)], (64, 64))
    torch.testing.assert_close(logits_u, head_only)  # every encoder feature of the unlabeled rows dropped


def test_flip_partner_mirrors_the_batch():
    x = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 2, 2).contiguous()
    box = torch.zeros(3, 2, 2, dtype=torch.bool)
    box[:, 0, 0] = True
    assert cutmix(x, box, "flip")[:, 0, 0, 0].tolist() == [2.0, 1.0, 0.0]
    assert cutmix(x, box, "roll")[:, 0, 0, 0].tolist() == [1.0, 2.0, 0.0]
    assert torch.equal(cutmix(x, box, "flip")[:, 0, 1, 1], x[:, 0, 1, 1])


def test_both_views_boxes_carry_labels_confidence_and_ignore_masks():
    torch.manual_seed(0)
    b, k, s = 3, 4, 8
    weak, strong, strong2 = (torch.randn(b, 3, s, s) for _ in range(3))
    box, box2 = torch.rand(b, s, s) > 0.5, torch.rand(b, s, s) > 0.5
    valid = torch.rand(b, s, s) > 0.2
    logits = torch.randn(b, k, s, s)
    batch = {"image": weak, "strong": strong, "strong2": strong2, "box": box, "box2": box2, "valid": valid}
    images, mixed, mixed_valid = student_views(batch, logits, views=2, partner="flip")
    assert images.shape == (2 * b, 3, s, s) and mixed.shape == (2 * b, k, s, s)
    for view, (image, view_box) in enumerate(((strong, box), (strong2, box2))):
        rows = slice(view * b, (view + 1) * b)
        where = view_box[:, None]
        assert torch.equal(images[rows], torch.where(where, image.flip(0), image))
        assert torch.equal(mixed[rows].argmax(1), torch.where(view_box, logits.argmax(1).flip(0), logits.argmax(1)))
        confidence = logits.softmax(1).amax(1)
        assert torch.equal(mixed[rows].softmax(1).amax(1), torch.where(view_box, confidence.flip(0), confidence))
        assert torch.equal(mixed_valid[rows], torch.where(view_box, valid.flip(0), valid))
    one = student_views(batch, logits, views=1, partner="flip")
    assert all(torch.equal(a, c[:b]) for a, c in zip(one, (images, mixed, mixed_valid)))


def test_a_second_view_leaves_the_first_and_draws_its_own():
    weak = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    one, two = UnlabeledViews(32, True, 0.9), UnlabeledViews(32, True, 0.9, views=2)
    seeds = range(6)
    pairs = []
    for seed in seeds:
        one.reseed(seed)
        two.reseed(seed)
        pairs.append((one(weak), two(weak)))
    for single, double in pairs:
        assert set(double) == {"strong", "box", "strong2", "box2"}
        assert torch.equal(single["strong"], double["strong"]) and torch.equal(single["box"], double["box"])
    assert any(not torch.equal(d["strong"], d["strong2"]) for _, d in pairs)
    assert any(not torch.equal(d["box"], d["box2"]) for _, d in pairs)


@pytest.mark.parametrize("boxes, taller", [("symmetric", (0.42, 0.58)), ("release", (0.67, 0.79))])
def test_box_samplers_differ_in_shape_only(boxes, taller):
    """UniMatch's draw (h / w uniform in 0.3..3.3, the corner redrawn until the box fits) makes about 3 in 4 boxes
    taller than wide; ours, log-uniform, as many tall as wide. Both: one rectangle inside the crop, 2..40 % of it,
    with the given probability."""
    views = UnlabeledViews(40, False, 0.5, boxes=boxes)
    views.reseed(0)
    weak = np.zeros((40, 40, 3), dtype=np.uint8)
    drawn = [views(weak)["box"] for _ in range(1500)]
    kept = [box for box in drawn if box.any()]
    assert 0.45 < len(kept) / len(drawn) < 0.55
    shares, tall = [], 0
    for box in kept:
        rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
        height, width = len(rows), len(cols)
        assert box.sum() == height * width and rows[-1] - rows[0] + 1 == height  # one rectangle
        shares.append(height * width / 1600)
        tall += height > width
    assert taller[0] < tall / len(kept) < taller[1]
    assert 0.005 < min(shares) and max(shares) <= 0.41


def test_recipe_name_expands_to_its_keys_and_the_command_line_wins(data_root, tmp_path):
    cfg = make_cfg(data_root, tmp_path, "allspark", "recipe=unimatch_v2")
    named = RECIPES["unimatch_v2"]
    assert cfg.recipe == RecipeConfig(**named["recipe"]) and cfg.recipe.passes == "auto"
    assert {k: getattr(cfg.train, k) for k in named["train"]} == named["train"]
    assert cfg.train.epochs == 2  # what the recipe does not name stays
    tweaked = make_cfg(data_root, tmp_path, "allspark", "recipe=unimatch_v2", "recipe.threshold=0.9",
                       "train.lr=1e-5")
    assert (tweaked.recipe.threshold, tweaked.train.lr, tweaked.recipe.views) == (0.9, 1e-5, 2)
    assert not cfg.data.labeled_colour
    sup = make_cfg(data_root, tmp_path, "sup", "recipe=unimatch_v2")
    assert sup.recipe == RecipeConfig()  # supervised.py: the optimiser and the labeled crops only
    assert (sup.train.optimizer, sup.train.lr, sup.train.lr_timing) == ("adamw", 5e-6, "after")
    assert not sup.data.labeled_colour and make_cfg(data_root, tmp_path, "sup").data.labeled_colour


@pytest.mark.parametrize("recipe, coloured", [(None, True), ("unimatch_v2", False)])
def test_labeled_crops_get_colour_only_outside_the_v2_recipe(tmp_path, recipe, coloured):
    """A one-colour labeled image: geometry alone keeps every unpadded pixel that colour (AllSpark's release
    jitters, greys and blurs labeled crops; UniMatch V2's semi.py does not)."""
    from PIL import Image
    root = tmp_path / "data"
    (root / "splits").mkdir(parents=True)
    Image.new("RGB", (80, 60), (200, 40, 90)).save(root / "flat.png")
    Image.new("L", (80, 60), 1).save(root / "flat_mask.png")
    (root / "splits" / "labeled.txt").write_text("flat.png flat_mask.png\n" * 8)
    extra = [f"recipe={recipe}"] if recipe else []
    cfg = make_cfg(root, tmp_path / "run", "sup", "model.crop_size=48", "train.batch_size=8", *extra)
    batch = next(iter(build_labeled_loader(cfg)))
    colour = (torch.tensor([200, 40, 90]) / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225])
    valid = (batch["mask"] != 255).unsqueeze(1).expand_as(batch["image"])
    error = (batch["image"] - colour[None, :, None, None]).abs()[valid]
    assert (error.max() > 0.05) == coloured


def test_recipe_name_in_a_file_keeps_the_files_train_keys(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: demo\nrecipe: unimatch_v2\ntrain:\n  lr: 0.00001\n")
    cfg = load_config(path)
    assert cfg.train.lr == 1e-5 and cfg.train.optimizer == "adamw" and cfg.recipe.comp_drop
    assert cfg.train.lr_multi == 40.0  # the recipe's over the base preset's


@pytest.mark.parametrize("override, key", [("recipe=unimatch", "recipe"), ("recipe.views=3", "recipe.views"),
                                           ("recipe.cutmix_partner=mirror", "recipe.cutmix_partner"),
                                           ("train.optimizer=adam", "train.optimizer"),
                                           ("train.lr_timing=later", "train.lr_timing"),
                                           ("recipe.comp_drop=true", "recipe.comp_drop"),
                                           ("recipe.passes=apart", "recipe.passes")])
def test_bad_v2_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config("demo", [override])


def _v2_reference(model, cfg, batch_l, batch_u, masks, steps, total):
    """unimatch_v2.py's loop written plainly on our model: the EMA teacher on the weak view; each strong view mixed
    with the mirrored batch inside its box, and so its pseudo-labels, confidence and ignore mask; the student's
    passes (labeled, then the views, as the release; one for AllSpark) with the fixed channel masks;
    (CE_l + (s1 + s2) / 2) / 2 with conf >= 0.95 and padding out, over the unpadded pixels; AdamW, the poly lr of
    step i set after it; EMA ratio min(1 - 1 / (i + 1), 0.996)."""
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    encoder = {id(p) for p in model.encoder.parameters()}
    lr, multi = cfg.train.lr, cfg.train.lr_multi
    optimizer = torch.optim.AdamW([{"params": [p for p in model.parameters() if id(p) in encoder], "lr": lr},
                                   {"params": [p for p in model.parameters() if id(p) not in encoder],
                                    "lr": lr * multi}], lr=lr, betas=(0.9, 0.999), weight_decay=0.01)
    memory = {n for n, _ in model.named_buffers() if n.endswith(("queue", "ptr"))}
    averaged = [n for n, _ in model.named_parameters()] + [
        n for n, b in model.named_buffers() if b.is_floating_point() and n not in memory]
    torch.manual_seed(1)
    out = []
    for i in range(steps):
        with torch.no_grad():
            pred = teacher(batch_u["image"])
        conf, label = pred.softmax(1).amax(1), pred.argmax(1)
        ignore = (~batch_u["valid"]).long() * 255
        images, labels, confs, ignores = [], [], [], []
        for key, box_key in (("strong", "box"), ("strong2", "box2")):
            box = batch_u[box_key]
            images.append(torch.where(box[:, None], batch_u[key].flip(0), batch_u[key]))
            labels.append(torch.where(box, label.flip(0), label))
            confs.append(torch.where(box, conf.flip(0), conf))
            ignores.append(torch.where(box, ignore.flip(0), ignore))
        mixed_logits = torch.cat([torch.where(batch_u[b][:, None], pred.flip(0), pred) for b in ("box", "box2")])
        model.train()
        if cfg.method == "semi":  # the release's two passes
            logits_l, logits_u = model(batch_l["image"]), model(torch.cat(images), channel_masks=masks)
        else:  # one pass, as the AllSpark module needs
            logits_l, logits_u = model(batch_l["image"], images_u=torch.cat(images), teacher_logits_u=mixed_logits,
                                       use_memory=False, channel_masks=masks)
        loss_x = F.cross_entropy(logits_l, batch_l["mask"], ignore_index=255)
        terms = []
        for pred_s, m, c, ig in zip(logits_u.chunk(2), labels, confs, ignores):
            pixels = F.cross_entropy(pred_s, m, reduction="none") * ((c >= 0.95) & (ig != 255))
            terms.append(pixels.sum() / (ig != 255).sum())
        loss_s = (terms[0] + terms[1]) / 2
        loss = (loss_x + loss_s) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        optimizer.param_groups[0]["lr"] = lr * (1 - i / total) ** 0.9
        optimizer.param_groups[1]["lr"] = lr * multi * (1 - i / total) ** 0.9
        ratio = min(1 - 1 / (i + 1), 0.996)
        with torch.no_grad():
            mine, theirs = model.state_dict(), teacher.state_dict()
            for name in averaged:
                theirs[name].copy_(theirs[name] * ratio + mine[name] * (1 - ratio))
        out.append((loss.item(), loss_x.item(), loss_s.item(), [g["lr"] for g in optimizer.param_groups]))
    return out, teacher


@pytest.mark.parametrize("method", ["semi", "allspark"])
def test_v2_loop_with_fixed_masks_equals_the_plain_reference(data_root, tmp_path, monkeypatch, method):
    # the reference runs the release's way: no autocast, PyTorch's default AdamW kernel (Adam turns the rounding
    # noise of a bias the loss cannot move into lr-sized steps, so another kernel's last bits show)
    cfg = make_cfg(data_root, tmp_path, method, *V2, *EXACT)
    batch_l, batch_u = _batches(cfg)
    assert {"strong", "strong2", "box", "box2"} <= set(batch_u) and batch_u["box"].any() and batch_u["box2"].any()
    torch.manual_seed(0)
    trainer = Trainer(cfg, total=10)
    assert trainer.two_passes == (method == "semi")  # auto: one pass for the AllSpark module
    start = copy.deepcopy(trainer.model.state_dict())
    masks = complementary_masks(2, max(trainer.model.encoder.channels), torch.Generator().manual_seed(3))
    monkeypatch.setattr(step_module, "complementary_masks", lambda pairs, channels: masks)
    torch.manual_seed(1)  # the head's dropout
    records = []
    for _ in range(4):
        records.append(trainer.step(batch_l, batch_u, use_memory=False))
        records[-1]["lrs"] = [g["lr"] for g in trainer.optimizer.param_groups]  # set for the next step

    torch.manual_seed(0)
    reference = Trainer(cfg, total=10).model
    reference.load_state_dict(start)
    expected, teacher = _v2_reference(reference, cfg, batch_l, batch_u, masks, 4, 10)
    assert [r["lr"] for r in records] == [5e-6, 5e-6, 5e-6 * poly_factor(1, 10), 5e-6 * poly_factor(2, 10)]
    for record, (loss, loss_x, loss_s, lrs) in zip(records, expected):
        assert (record["loss"], record["loss_l"], record["loss_u"]) == pytest.approx((loss, loss_x, loss_s), rel=1e-5)
        assert record["lrs"] == pytest.approx(lrs, rel=1e-12)
    ours, theirs = trainer.model.state_dict(), reference.state_dict()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6, msg=name)
    ema = trainer.ema.model.state_dict()
    for name in trainer.ema.names:
        torch.testing.assert_close(ema[name], teacher.state_dict()[name], rtol=1e-5, atol=1e-6, msg=name)


def test_sup_with_the_v2_optimiser_is_supervised_py(data_root, tmp_path):
    cfg = make_cfg(data_root, tmp_path, "sup", "recipe=unimatch_v2", *EXACT)  # supervised.py's fp32 and AdamW
    batch_l = next(iter(build_labeled_loader(cfg)))
    torch.manual_seed(0)
    trainer = Trainer(cfg, total=10)
    assert trainer.ema is None and isinstance(trainer.optimizer, torch.optim.AdamW)
    model = copy.deepcopy(trainer.model)
    torch.manual_seed(1)
    records = [trainer.step(batch_l, None, use_memory=False) for _ in range(3)]
    encoder = {id(p) for p in model.encoder.parameters()}
    optimizer = torch.optim.AdamW([{"params": [p for p in model.parameters() if id(p) in encoder], "lr": 5e-6},
                                   {"params": [p for p in model.parameters() if id(p) not in encoder], "lr": 2e-4}],
                                  lr=5e-6, betas=(0.9, 0.999), weight_decay=0.01)
    torch.manual_seed(1)
    for i, record in enumerate(records):
        model.train()
        loss = F.cross_entropy(model(batch_l["image"]), batch_l["mask"], ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for group, base in zip(optimizer.param_groups, (5e-6, 2e-4)):
            group["lr"] = base * (1 - i / 10) ** 0.9
        assert record["loss"] == pytest.approx(loss.item(), rel=1e-5)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(trainer.model.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)


def _first_steps(cfg, batch_l, batch_u, steps=2):
    torch.manual_seed(0)
    trainer = Trainer(cfg, total=10)
    torch.manual_seed(1)
    records = [trainer.step(batch_l, batch_u, use_memory=False) for _ in range(steps)]
    return records, trainer


def test_each_v2_switch_changes_only_its_part(data_root, tmp_path, monkeypatch):
    base = ["recipe.strong_views=true", "recipe.cutmix_prob=1", "recipe.views=2"]
    cfg = make_cfg(data_root, tmp_path, "semi", *base)
    batch_l, batch_u = _batches(cfg)
    plain, plain_trainer = _first_steps(cfg, batch_l, batch_u)
    # lr_timing after: the same first step, then the second at the full lr instead of poly(1)
    after, _ = _first_steps(make_cfg(data_root, tmp_path, "semi", *base, "train.lr_timing=after"), batch_l, batch_u)
    assert after[0] == plain[0] and after[1]["lr"] == plain[0]["lr"] > plain[1]["lr"]
    # adamw: the same first losses, another update
    adamw, adamw_trainer = _first_steps(make_cfg(data_root, tmp_path, "semi", *base, "train.optimizer=adamw"),
                                        batch_l, batch_u)
    assert adamw[0] == plain[0] and adamw[1]["loss"] != plain[1]["loss"]
    assert isinstance(adamw_trainer.optimizer, torch.optim.AdamW)
    assert adamw_trainer.optimizer.defaults["betas"] == (0.9, 0.999)
    # comp_drop with all-ones masks is no dropout at all; with real ones only the unlabeled term moves at first
    monkeypatch.setattr(step_module, "complementary_masks", lambda pairs, channels: torch.ones(2 * pairs, channels))
    ones, _ = _first_steps(make_cfg(data_root, tmp_path, "semi", *base, "recipe.comp_drop=true"), batch_l, batch_u)
    assert ones == plain
    monkeypatch.undo()
    dropped, _ = _first_steps(make_cfg(data_root, tmp_path, "semi", *base, "recipe.comp_drop=true"), batch_l, batch_u)
    assert dropped[0]["loss_u"] != plain[0]["loss_u"] and dropped[0]["mask_ratio"] == plain[0]["mask_ratio"]
    # the flip partner: another student view, the same teacher (at batch 2 the mirror is the roll: batch 4)
    four = make_cfg(data_root, tmp_path, "semi", *base, "train.batch_size=4", "recipe.threshold=0.5")
    rolled, _ = _first_steps(four, *_batches(four), steps=1)
    four = make_cfg(data_root, tmp_path, "semi", *base, "train.batch_size=4", "recipe.threshold=0.5",
                    "recipe.cutmix_partner=flip")
    flip, _ = _first_steps(four, *_batches(four), steps=1)
    assert flip[0]["mask_ratio"] == rolled[0]["mask_ratio"] and flip[0]["loss_u"] != rolled[0]["loss_u"]
    # passes apart: the labeled batch alone through the student, so its BatchNorm statistics and loss change
    apart, _ = _first_steps(make_cfg(data_root, tmp_path, "semi", *base, "recipe.passes=apart"), batch_l, batch_u)
    assert apart[0]["mask_ratio"] == plain[0]["mask_ratio"] and apart[0]["loss_l"] != plain[0]["loss_l"]
    # views 2: the first view's term is the one-view run's
    one, _ = _first_steps(make_cfg(data_root, tmp_path, "semi", *base[:2]), batch_l, batch_u, steps=1)
    assert one[0]["mask_ratio"] == plain[0]["mask_ratio"] and one[0]["loss_u"] != plain[0]["loss_u"]


def test_the_ema_ratio_is_the_releases():
    momentum = RECIPES["unimatch_v2"]["recipe"]["ema_momentum"]
    from allspark.engine.recipes import EmaTeacher
    ema = EmaTeacher(torch.nn.Linear(2, 2), momentum)
    for i in (0, 1, 2, 10, 248, 249, 250, 10_000):
        assert ema.momentum_at(i) == pytest.approx(min(1 - 1 / (i + 1), 0.996), abs=1e-15)
    assert ema.momentum_at(10_000) == 0.996


@pytest.mark.parametrize("method, workers", [("allspark", 0), ("semi", 2)])
def test_v2_loop_resumes_exactly(data_root, tmp_path, monkeypatch, method, workers):
    """Killed at iteration 7, resumed from 6: the losses, weights, EMA teacher of an uninterrupted run (the channel
    masks come from the saved RNG, both views from the samples' seeds)."""
    def cfg(name):
        return make_cfg(data_root, tmp_path / name, method, f"data.workers={workers}", "recipe=unimatch_v2",
                        "recipe.threshold=0.3")

    from allspark.runs.checkpoints import load_checkpoint
    from allspark.runs.metrics import read_metrics
    train_until(cfg("whole"), monkeypatch)
    train_until(cfg("parts"), monkeypatch, stop_at=7)
    train_until(cfg("parts"), monkeypatch)

    def losses(run):
        return [(r["iter"], r["loss"], r["loss_l"], r["loss_u"], r["lr"]) for r in read_metrics(run)
                if r["split"] == "train"]

    assert len(losses(tmp_path / "whole")) == 8 and losses(tmp_path / "parts") == losses(tmp_path / "whole")
    (whole_model, whole), (parts_model, parts) = (load_checkpoint(tmp_path / n) for n in ("whole", "parts"))
    assert all(torch.equal(whole_model[k], parts_model[k]) for k in whole_model)
    assert all(torch.equal(whole["ema"][k], parts["ema"][k]) for k in whole["ema"])
