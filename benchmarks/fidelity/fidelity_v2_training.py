"""UniMatch V2's training loop: our `recipe: unimatch_v2` steps against the release's, from the same start.

The release's step runs through the measuring harness (../shared/reference/harness/unimatch_v2.py: its
`unimatch_v2_step`, `supervised_step`, `make_optimizer`, `make_ema` and `evaluate`, the loop bodies of the
release's unimatch_v2.py and supervised.py). Ours runs through `Trainer.step` with `method=semi recipe=unimatch_v2`
(and `method=sup recipe=unimatch_v2` for supervised.py). Both sides train copies of one model on the same batches,
CutMix boxes and complementary-dropout masks; the release's side gets it dressed as its DPT (`backbone` for its
optimiser groups, a `comp_drop` forward that applies the step's masks). The model is our segmenter with its
BatchNorm and dropout layers off: the release runs the labeled and the strong views through the model apart, we
in one pass (METHODS.md), which only batch statistics and dropout draws could tell apart, and DINOv2 + DPT has
neither. The model is DINOv2-small + DPT by default (`--encoder`; fidelity_unimatch_v2.py shows it equal to the
release's on the same weights); any other encoder of the registry can stand in.

Per step: losses, mask ratio, both learning rates, the student's and the EMA teacher's weights (relative); at the
end the validation mIoU of the EMA teacher by both evaluations, and the CutMix boxes of `cutmix_boxes: release`
against the release's own sampler (share with a box, share taller than wide, mean area). One line per check; the last line is
`fidelity: PASS`, or `fidelity: FAIL` with exit status 1.

    .venv/bin/python -m benchmarks.fidelity.fidelity_v2_training --threads 1     # 10 steps each side, ~1 min
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from benchmarks.fidelity.fidelity_allspark import Report, relative
from benchmarks.fidelity.release_harness import import_harness
from benchmarks.timing import EXACT_OVERRIDES, REFERENCE


class ReleaseShaped(nn.Module):
    """Our segmenter as the harness expects the release's DPT: encoder as `backbone` (registered first, so its
    parameters are named backbone.*), `model(x, comp_drop=True)` scaling the encoder features of the stacked strong
    views by the next of `masks`, channel by channel, as the release's DPT does."""

    def __init__(self, net: nn.Module, masks: list[torch.Tensor]):
        super().__init__()
        self.backbone = net.encoder
        self.net = net
        self.masks = masks

    def forward(self, x: torch.Tensor, comp_drop: bool = False) -> torch.Tensor:
        return self.net(x, channel_masks=self.masks.pop(0) if comp_drop else None)


def deterministic(model: nn.Module) -> nn.Module:
    """Dropout and stochastic depth off (their draws differ between one pass and two)."""
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.0
    return model


class NoBatchNorm(nn.Identity):
    """Stands in for BatchNorm2d while the stand-in model is built (see the module text)."""

    def __init__(self, *args, **kwargs):
        super().__init__()


def build_trainer(cfg, total: int):
    """Our trainer for `cfg`, its model built without BatchNorm and run without dropout (see the module text)."""
    from allspark.engine.step import Trainer
    batch_norm = nn.BatchNorm2d
    nn.BatchNorm2d = NoBatchNorm
    try:
        trainer = Trainer(cfg, total=total)
    finally:
        nn.BatchNorm2d = batch_norm
    deterministic(trainer.model)
    return trainer


def config(root: Path, method: str, args):
    from allspark.config.loading import load_config
    return load_config("demo", [f"method={method}", "recipe=unimatch_v2", f"data.root={root}",
                                f"run_dir={root / 'run'}", f"model.num_classes={args.classes}",
                                f"model.crop_size={args.crop}", f"train.batch_size={args.batch}",
                                f"model.encoder={args.encoder}",
                                "eval.miou_over=all", "data.workers=0", f"train.seed={args.seed}", *EXACT_OVERRIDES])


def batches(cfg, steps: int, unlabeled: bool):
    """`steps` (labeled, unlabeled or None) batch pairs from our loaders, cycling through the epochs."""
    from allspark.data.loaders import build_labeled_loader, build_unlabeled_loader
    out = []
    loader_l = build_labeled_loader(cfg)
    loader_u = build_unlabeled_loader(cfg) if unlabeled else None
    while len(out) < steps:
        pairs = zip(loader_l, loader_u) if unlabeled else ((b, None) for b in loader_l)
        out.extend(list(pairs)[:steps - len(out)])
    return out


def compare_states(report: Report, name: str, ours: nn.Module, theirs: nn.Module, tol: float) -> None:
    mine, other = ours.state_dict(), theirs.state_dict()
    worst, key = max((relative(other[k], mine[k]), k) for k in mine if mine[k].is_floating_point())
    report.check(name, worst, tol, f"max over tensors of max|d| / max|ref| (at {key})")


def semi_checks(report: Report, harness, root: Path, args) -> None:
    from allspark.data.loaders import build_val_loader
    from allspark.engine import step as step_module
    from allspark.engine.evaluate import evaluate
    from allspark.engine.recipes import complementary_masks
    cfg = config(root, "semi", args)
    torch.manual_seed(args.seed)
    trainer = build_trainer(cfg, args.steps)
    widest = max(trainer.model.encoder.channels)
    generator = torch.Generator().manual_seed(args.seed + 1)
    masks = [complementary_masks(args.batch, widest, generator) for _ in range(args.steps)]
    theirs = ReleaseShaped(copy.deepcopy(trainer.model), list(masks))
    ema = harness.make_ema(theirs)
    lr, multi = cfg.train.lr, cfg.train.lr_multi
    optimizer = harness.make_optimizer(theirs, lr, multi)
    ours_masks = list(masks)
    step_module.complementary_masks = lambda pairs, channels: ours_masks.pop(0)
    boxes = 0
    for i, (batch_l, batch_u) in enumerate(batches(cfg, args.steps, True)):
        boxes += int(batch_u["box"].flatten(1).any(1).sum() + batch_u["box2"].flatten(1).any(1).sum())
        record = trainer.step(batch_l, batch_u, use_memory=False)
        ignore = (~batch_u["valid"]).long() * 255
        release = harness.unimatch_v2_step(
            theirs, ema, optimizer, (batch_l["image"], batch_l["mask"]),
            (batch_u["image"], batch_u["strong"], batch_u["strong2"], ignore, batch_u["box"].long(),
             batch_u["box2"].long()), conf_thresh=cfg.recipe.threshold, iters=i, total_iters=args.steps, lr=lr,
            lr_multi=multi)
        for ours_key, their_key in (("loss", "loss"), ("loss_l", "loss_x"), ("loss_u", "loss_s"),
                                    ("mask_ratio", "mask_ratio")):
            report.check(f"v2 step {i}: {ours_key} vs {their_key}",
                         relative(torch.tensor(release[their_key]), torch.tensor(record[ours_key])), args.tol)
        lrs = [g["lr"] for g in trainer.optimizer.param_groups]
        their_lrs = [g["lr"] for g in optimizer.param_groups]
        report.check(f"v2 step {i}: next lrs {their_lrs[0]:.3e}/{their_lrs[1]:.3e}",
                     relative(torch.tensor(their_lrs), torch.tensor(lrs)), args.tol)
        compare_states(report, f"v2 step {i}: student weights", trainer.model, theirs.net, args.tol)
        compare_states(report, f"v2 step {i}: EMA teacher weights", trainer.ema.model, ema.net, args.tol)
    report.info("v2: strong views with a CutMix box", boxes, f"of {2 * args.batch * args.steps}")
    val = build_val_loader(cfg)
    ours = evaluate(trainer.ema.model, val, cfg, torch.device("cpu"), amp="off", progress=False).miou() * 100
    items = [(b["image"][0], b["mask"][0]) for b in val]
    release, _ = harness.evaluate(ReleaseShaped(trainer.ema.model, []), items, args.classes)
    report.check(f"v2: EMA teacher mIoU, ours {ours:.4f} vs release's evaluate {release:.4f}",
                 abs(ours - release), 1e-6)


def box_shapes(draw, count: int) -> dict[str, float]:
    """Statistics of `count` boxes from draw() ((S, S) masks; empty when no box): the share with a box, then over
    the boxes the share taller than wide and the mean area over the crop."""
    kept, tall, area = 0, 0, 0.0
    for _ in range(count):
        mask = torch.as_tensor(draw()).bool()
        if mask.any():
            rows, cols = mask.any(1).sum().item(), mask.any(0).sum().item()
            kept, tall, area = kept + 1, tall + (rows > cols), area + mask.float().mean().item()
    return {"box": kept / count, "taller": tall / kept, "area": area / kept}


def box_checks(report: Report, harness, root: Path, args) -> None:
    """recipe.cutmix_boxes=release against the release's obtain_cutmix_box (its own code, NumPy's global
    generator): the same distribution, within 4 standard errors of the difference of two samples."""
    import random

    import numpy as np

    from allspark.data.views import release_cutmix_box
    harness.load_release()
    from dataset.transform import obtain_cutmix_box  # the release's module, put on sys.path by load_release
    random.seed(args.seed)
    np.random.seed(args.seed)
    theirs = box_shapes(lambda: obtain_cutmix_box(args.crop, p=0.5), args.boxes)
    rng = np.random.default_rng(args.seed)
    ours = box_shapes(lambda: release_cutmix_box(args.crop, 0.5, rng), args.boxes)
    for key, spread in (("box", 0.5), ("taller", 0.45), ("area", 0.11)):  # the statistic's standard deviation
        bound = 4 * spread * (2 / (args.boxes * (0.5 if key != "box" else 1))) ** 0.5
        report.check(f"boxes: {key}, ours {ours[key]:.4f} vs release {theirs[key]:.4f}",
                     abs(ours[key] - theirs[key]), bound)


def sup_checks(report: Report, harness, root: Path, args) -> None:
    cfg = config(root, "sup", args)
    torch.manual_seed(args.seed)
    trainer = build_trainer(cfg, args.steps)
    assert trainer.ema is None
    theirs = ReleaseShaped(copy.deepcopy(trainer.model), [])
    lr, multi = cfg.train.lr, cfg.train.lr_multi
    optimizer = harness.make_optimizer(theirs, lr, multi)
    for i, (batch_l, _) in enumerate(batches(cfg, args.steps, False)):
        record = trainer.step(batch_l, None, use_memory=False)
        release = harness.supervised_step(theirs, optimizer, batch_l["image"], batch_l["mask"], i, args.steps,
                                          lr, multi)
        report.check(f"sup step {i}: loss", relative(torch.tensor(release["loss"]), torch.tensor(record["loss"])),
                     args.tol)
        lrs = torch.tensor([g["lr"] for g in trainer.optimizer.param_groups])
        report.check(f"sup step {i}: next lrs", relative(torch.tensor([g["lr"] for g in optimizer.param_groups]),
                                                          lrs), args.tol)
        compare_states(report, f"sup step {i}: weights", trainer.model, theirs.net, args.tol)


# each (report, harness, data root, args): a list, so the model checks of fidelity_unimatch_v2.py can run beside them
TRAINING_CHECKS = (semi_checks, sup_checks, box_checks)


def run_training_checks(report: Report, harness, args) -> None:
    """Every check of TRAINING_CHECKS on a synthetic set made for the run (args: add_training_arguments')."""
    from allspark.data.splits import make_split
    from allspark.data.synthetic import generate_synthetic
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_synthetic(Path(tmp) / "data", num_train=4 + 4 * args.batch, num_val=3, size=args.crop,
                                  seed=args.seed, num_classes=args.classes)
        make_split(root / "train.txt", root / "splits", count=4, seed=args.seed)
        for checks in TRAINING_CHECKS:
            checks(report, harness, root, args)


def add_training_arguments(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The training checks' options; `prefix` keeps them apart where a script has model checks of its own."""
    p.add_argument(f"--{prefix}steps", type=int, default=10)
    p.add_argument(f"--{prefix}batch", type=int, default=2, help="labeled and unlabeled images per step, each")
    p.add_argument(f"--{prefix}crop", type=int, default=56, help="training crop and image side: a multiple of 14, "
                   "so the release's evaluation resizes nothing")
    p.add_argument(f"--{prefix}classes", type=int, default=4)
    p.add_argument("--encoder", default="dinov2_small", help="model.encoder of both sides (its default head)")
    p.add_argument(f"--{prefix}seed", type=int, default=0)
    p.add_argument("--boxes", type=int, default=20000, help="CutMix boxes drawn by each sampler")
    p.add_argument(f"--{prefix}tol", type=float, default=1e-5, help="relative, float32")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", default=REFERENCE, help="the shared/reference folder")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_training_arguments(p)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    harness = import_harness(Path(args.reference), "unimatch_v2", "fidelity_v2_training")
    report = Report()
    run_training_checks(report, harness, args)
    if report.failed:
        print(f"fidelity: FAIL ({len(report.failed)} checks: {', '.join(report.failed[:5])})")
        sys.exit(1)
    print("fidelity: PASS")


if __name__ == "__main__":
    main()
