"""AllSpark fidelity: our package against the authors' release, in one process, from the same weights.

The release runs unmodified through the measuring harness in ../shared/reference (its `official` module; the venv
needs einops). Ours runs through the package's API: `allspark.load_official` converts the release's weights,
`model(...)` and `predict.windows.predict_probs` infer, `Trainer.step` trains. The release's model is built from
--seed, then its norm weights and biases, other biases and BatchNorm statistics are moved off their init, so that a
mis-mapped LayerNorm (1 and 0 at init) cannot hide.

One line per check: PASS or FAIL, the comparison, the measured value and its bound; `info` lines measure a
deliberate difference (docs/METHODS.md 5) and are never gated. The last line is `fidelity: PASS`, or
`fidelity: FAIL` and the failed checks with exit status 1.

    .venv/bin/python -m benchmarks.fidelity.fidelity_allspark --threads 1          # MiT-B0, crop 161, 12 steps: ~1 min
    .venv/bin/python -m benchmarks.fidelity.fidelity_allspark --quick --threads 1  # crop 65, 4 steps: the slow test's
"""
from __future__ import annotations

import argparse
import copy
import sys
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.fidelity.release_harness import import_harness
from benchmarks.timing import EXACT, REFERENCE, seconds, timed

IGNORE = 255
ARCHS = ("b0", "b1", "b2", "b3", "b4", "b5")


class Report:
    """Collects the check lines; `failed` names the gated checks over their bound."""

    def __init__(self):
        self.failed: list[str] = []

    def check(self, name: str, value: float, bound: float, note: str = "") -> None:
        ok = value <= bound  # NaN fails
        if not ok:
            self.failed.append(name)
        print(f"{'PASS' if ok else 'FAIL'}  {name:<72} {value:9.1e} <= {bound:.0e}  {note}".rstrip(), flush=True)

    def info(self, name: str, value: float, note: str = "") -> None:
        print(f"info  {name:<72} {value:9.1e}           {note}".rstrip(), flush=True)


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


def relative(ref: torch.Tensor, out: torch.Tensor) -> float:
    """max|ref - out| / max|ref|: elementwise ratios mean nothing where the reference is near zero."""
    return max_abs(ref, out) / max(ref.detach().abs().max().item(), 1e-30)


# ------------------------------------------------------------------------------------------------ the pair
def our_model_config(args, method: str) -> dict:
    return {"encoder": f"mit_{args.arch}", "num_classes": args.classes, "crop_size": args.crop, "heads": 2,
            "ablation": "full" if method == "allspark" else "none", "grouping": "logits"}


def move_off_init(model: nn.Module, seed: int) -> None:
    """Seeded shifts of every norm weight and bias, the other biases and BatchNorm's running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                m.weight.add_(0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.add_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
                m.bias.add_(0.02 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.add_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.mul_(0.5 + torch.rand(m.running_var.shape, generator=g))


def no_dropout(model: nn.Module, attn_dropout: float) -> nn.Module:
    """Dropout and drop-path off. Our attention dropout is a float, not a module: a value under 2^-17 keeps the CPU
    training kernel (chunked_attention) on the path while its keep probability rounds to 1."""
    for m in model.modules():
        if isinstance(m, (nn.Dropout, nn.Dropout2d)):
            m.p = 0.0
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0
    if getattr(model, "allspark", None) is not None:
        model.allspark.attn.dropout = attn_dropout
    return model


def build_pair(official, args, method: str = "allspark"):
    """(release model, our model): the release built from --seed and moved off its init, ours converted from it."""
    import allspark

    decoder = "allspark" if method == "allspark" else "base"
    release = official.build_official_model(args.arch, args.classes, args.crop, warmup_epoch=args.mem_on,
                                            decoder=decoder, seed=args.seed)
    move_off_init(release, args.seed + 1)
    return release, allspark.load_official(release.state_dict(), our_model_config(args, method))


def batch_teacher(model: nn.Module):
    """The release's evaluation-mode semantics from our model: every image's labeled-branch keys are the channels of
    the whole batch. Our training pass with the batch as its own unlabeled half, in eval mode, computes exactly that
    (eval mode writes no memory)."""
    def run(images: torch.Tensor) -> torch.Tensor:
        return model(images, images_u=images, use_memory=False)[0]
    return run


# ------------------------------------------------------------------------------------------------ structure
def check_structure(report: Report, args, release, ours) -> None:
    from allspark.config.loading import config_from_dict
    from allspark.engine.step import Trainer
    from allspark.models.convert import release_to_ours

    converted = release_to_ours(release.state_dict())
    report.check(f"structure: release tensors without a place in ours (of {len(converted.tensors)})",
                 len(converted.unconsumed), 0)
    ours_modules, release_modules = dict(ours.named_modules()), dict(release.named_modules())
    differ = 0
    for key, source in converted.origin.items():
        mine, theirs = ours_modules[key.rsplit(".", 1)[0]], release_modules[source.split(" ")[0].rsplit(".", 1)[0]]
        if isinstance(theirs, (nn.LayerNorm, nn.BatchNorm2d)) and key.endswith(".weight"):
            differ += type(mine) is not type(theirs) or mine.eps != theirs.eps or \
                getattr(mine, "momentum", None) != getattr(theirs, "momentum", None)
    report.check("structure: norm layers whose type, eps or momentum differ", differ, 0)
    report.check("structure: dropout and drop-path probabilities differ", float(dropouts(release) != dropouts(ours)), 0,
                 f"{len(dropouts(release))} non-zero in the release")
    decoder = copy.copy(release.decoder)
    decoder.warmup_epoch = 5
    cfg = config_from_dict({"method": "allspark", "model": our_model_config(args, "allspark"),
                            "train": {"warmup_epochs": 5, **EXACT}})
    trainer = Trainer(cfg, total=1)
    wrong = 0
    for epoch in range(10):
        decoder.set_SMem_status(epoch=epoch, isVal=False)
        wrong += bool(decoder.using_SMem) != trainer.use_memory(epoch)
    report.check("structure: epochs 0..9 where S-Mem is switched on differently (warm-up 5)", wrong, 0)


def dropouts(model: nn.Module) -> list[tuple[str, float]]:
    """Every non-zero dropout and drop-path probability, sorted; our attention dropout counts as a Dropout."""
    found = [("drop_path", round(float(m.drop_prob), 6)) for m in model.modules() if hasattr(m, "drop_prob")]
    found += [(type(m).__name__, m.p) for m in model.modules() if isinstance(m, (nn.Dropout, nn.Dropout2d)) and m.p > 0]
    if getattr(model, "allspark", None) is not None:
        found.append(("Dropout", model.allspark.attn.dropout))
    return sorted(found)


# ------------------------------------------------------------------------------------------------ inference
@torch.no_grad()
def check_inference(report: Report, args, release, ours, g: torch.Generator) -> None:
    release.eval(), ours.eval()
    worst = 0.0
    for h, w in args.infer_sizes:
        x = torch.randn(1, 3, h, w, generator=g)
        worst = max(worst, relative(release(x), ours(x)))
    report.check(f"infer: logits at batch 1, sizes {fmt_sizes(args.infer_sizes)} (relative)", worst, args.tol)
    release64, ours64 = copy.deepcopy(release).double(), copy.deepcopy(ours).double()
    worst = 0.0
    for h, w in args.infer_sizes[:2]:
        x = torch.randn(1, 3, h, w, generator=g, dtype=torch.float64)
        worst = max(worst, relative(release64(x), ours64(x)))
    report.check("infer: float64 logits at batch 1 (relative)", worst, args.tol_fp64)
    x = torch.randn(4, 3, args.crop, args.crop, generator=g)
    batch = ours(x)
    report.check("infer: ours at batch 4 vs each image alone (relative)",
                 relative(torch.cat([ours(x[i:i + 1]) for i in range(4)]), batch), args.tol)
    mixed = release(x)
    report.info("infer: release at batch 4 mixes its images, vs ours at batch 4", relative(mixed, batch),
                f"{pixels_changed(mixed, batch):.2f} % of pixels change class")


@torch.no_grad()
def check_sliding(report: Report, args, release, ours, g: torch.Generator) -> None:
    """The release's sliding-window loop (Cityscapes) against `predict_probs` with its placement and the aligned one."""
    from allspark.predict.windows import predict_probs

    worst, changed = 0.0, 0.0
    for h, w in args.sliding_sizes:
        x = torch.randn(1, 3, h, w, generator=g)
        reference = release_sliding(release, x, args.crop, args.classes)
        same = predict_probs(ours, x, mode="sliding", window=args.crop, stride_ratio=2 / 3, placement="release")
        aligned = predict_probs(ours, x, mode="sliding", window=args.crop, stride_ratio=2 / 3)
        worst = max(worst, max_abs(reference, same))
        changed = max(changed, pixels_changed(reference, aligned))
    sizes = fmt_sizes(args.sliding_sizes)
    report.check(f"infer: sliding windows {sizes}, window {args.crop}, placement=release (probabilities)",
                 worst, args.tol)
    report.info("infer: sliding windows, our aligned placement vs the release's", changed, "% of pixels change class")


def release_sliding(model, image: torch.Tensor, window: int, classes: int) -> torch.Tensor:
    """The release's evaluation loop (train_baseline_sup.evaluate): a window every int(2/3 window) px from 0, clipped
    at the border, softmax summed; divided here by the window count per pixel to give mean probabilities."""
    _, _, h, w = image.shape
    step = int(window * 2 / 3)
    total, count = torch.zeros(1, classes, h, w), torch.zeros(1, 1, h, w)
    for top in range(0, h, step):
        for left in range(0, w, step):
            rows, cols = slice(top, min(h, top + window)), slice(left, min(w, left + window))
            total[:, :, rows, cols] += model(image[:, :, rows, cols]).softmax(dim=1)
            count[:, :, rows, cols] += 1
    return total / count


def pixels_changed(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(1) != b.argmax(1)).double().mean().item() * 100


def fmt_sizes(sizes) -> str:
    return ",".join(f"{h}x{w}" for h, w in dict.fromkeys(sizes))


# ------------------------------------------------------------------------------------------------ memory
@torch.no_grad()
def check_memory_update(report: Report, release, g: torch.Generator) -> None:
    """The S-Mem write alone: the release's loop over images (CrossAttnMem._dequeue_and_enqueue) against our
    vectorised `enqueue`, from the same queue and pointers, on class assignments chosen to stress the ring."""
    from allspark.models.allspark import enqueue

    attn = copy.deepcopy(release.decoder.allspark.attn)
    classes, channels, tokens = attn.kv_queue.shape
    cases = {"random classes, 2 images": (2, lambda b: torch.randint(0, classes, (b, channels), generator=g)),
             "every channel one class, 2 images (wraps)": (2, lambda b: torch.full((b, channels), classes - 1)),
             "2 classes, 8 images": (8, lambda b: torch.randint(0, 2, (b, channels), generator=g)),
             "random classes, 8 images": (8, lambda b: torch.randint(0, classes, (b, channels), generator=g))}
    worst = 0.0
    for images, assign in cases.values():
        queue = torch.randn(classes, channels, tokens, generator=g)
        ptr = torch.randint(0, channels, (classes,), generator=g)
        written, assigned = torch.randn(images, tokens, channels, generator=g), assign(images)  # (B, d, C), (B, C)
        attn.kv_queue.copy_(queue), attn.queue_ptr.copy_(ptr)
        for b in range(images):
            attn._dequeue_and_enqueue(written[b], assigned[b])
        enqueue(queue, ptr, written.mT, assigned)
        worst = max(worst, max_abs(queue, attn.kv_queue), float(not torch.equal(ptr, attn.queue_ptr)))
    report.check(f"memory: S-Mem write alone, {len(cases)} cases (queue max|d|, pointers)", worst, 0.0,
                 "bitwise: " + "; ".join(cases))


# ------------------------------------------------------------------------------------------------ training forward
def draw_batch(args, g: torch.Generator, dtype=torch.float32):
    """A labeled batch with a band of ignored pixels, and an unlabeled batch, crop x crop."""
    b, s, k = args.batch, args.crop, args.classes
    mask = torch.randint(0, k, (b, s, s), generator=g)
    mask[:, :, :6] = IGNORE
    return torch.randn(b, 3, s, s, generator=g, dtype=dtype), mask, torch.randn(b, 3, s, s, generator=g, dtype=dtype)


def student_pass(release, ours, batch, teacher_logits: torch.Tensor, use_memory: bool) -> dict:
    """One training-mode pass of each on [labeled; unlabeled] with the release's teacher logits, the CE losses and
    their gradients; returns the differences."""
    from allspark.engine.losses import labeled_loss, unlabeled_loss

    images_l, mask, images_u = batch
    pseudo = teacher_logits.argmax(1)
    release.decoder.set_pseudo_prob_map(teacher_logits)
    release.decoder.set_pseudo_label(pseudo)
    release.decoder.using_SMem = use_memory
    release.train(), ours.train()
    rel_l, rel_u = release(torch.cat([images_l, images_u])).split(images_l.shape[0])
    our_l, our_u = ours(images_l, images_u=images_u, teacher_logits_u=teacher_logits, use_memory=use_memory)
    rel_terms = (F.cross_entropy(rel_l, mask, ignore_index=IGNORE), F.cross_entropy(rel_u, pseudo, ignore_index=IGNORE))
    everywhere = torch.ones_like(pseudo, dtype=torch.bool)
    our_terms = (labeled_loss(our_l, mask, "ce", 0.7, 200000), unlabeled_loss(our_u, pseudo, everywhere))
    release.zero_grad(set_to_none=True), ours.zero_grad(set_to_none=True)
    (sum(rel_terms) / 2).backward()
    (sum(our_terms) / 2).backward()
    attn = release.decoder.allspark.attn
    return {"logits": max(relative(rel_l, our_l), relative(rel_u, our_u)),
            "queue": max_abs(attn.kv_queue, ours.allspark.memory.queue),
            "ptr": float(not torch.equal(attn.queue_ptr, ours.allspark.memory.ptr)),
            "loss": max(abs(r.item() - o.item()) for r, o in zip(rel_terms, our_terms)),
            "grads": gradient_difference(release, ours)}


def gradient_difference(release, ours) -> float:
    """Worst ||g_ours - g_release|| / ||g_release|| over parameters (the release's mapped to our names), the norm
    floored at 1e-4 of the largest: some gradients are zero in exact arithmetic and hold only rounding noise."""
    from allspark.models.convert import release_to_ours

    theirs = release_to_ours({k: p.grad for k, p in release.named_parameters() if p.grad is not None}).tensors
    mine = {k: p.grad for k, p in ours.named_parameters()}
    if any(mine.get(k) is None for k in theirs):
        return float("inf")
    floor = 1e-4 * max(g.double().norm().item() for g in theirs.values())
    return max((g.double() - mine[k].double()).norm().item() / max(g.double().norm().item(), floor)
               for k, g in theirs.items())


def check_training_forward(report: Report, official, args, g: torch.Generator) -> None:
    release, ours = build_pair(official, args)
    no_dropout(release, 0.0), no_dropout(ours, args.attn_dropout)
    worst = {"logits": 0.0, "queue": 0.0, "ptr": 0.0, "loss": 0.0, "grads": 0.0}
    teacher = {"batch 1": 0.0, "batch": 0.0, "mixed": 0.0}
    for step in range(args.fwd_steps):
        batch = draw_batch(args, g)
        with torch.no_grad():
            release.eval(), ours.eval()
            logits_u = release(batch[2])  # the release's teacher: the batch's images mixed
            alone = torch.cat([release(x[None]) for x in batch[2]])
            teacher["batch 1"] = max(teacher["batch 1"], relative(alone, ours(batch[2])))
            teacher["batch"] = max(teacher["batch"], relative(logits_u, batch_teacher(ours)(batch[2])))
            teacher["mixed"] = max(teacher["mixed"], relative(logits_u, ours(batch[2])))
        for key, value in student_pass(release, ours, batch, logits_u, step >= args.mem_on).items():
            worst[key] = max(worst[key], value)
    steps = f"{args.fwd_steps} steps, S-Mem on from step {args.mem_on}"
    report.check(f"train-fwd: logits_l and logits_u, {steps} (relative)", worst["logits"], args.tol)
    report.check("train-fwd: S-Mem queue after each step (max|d|)", worst["queue"], args.tol)
    report.check("train-fwd: S-Mem pointers differ after a step", worst["ptr"], 0)
    report.check("train-fwd: CE losses (max|d|)", worst["loss"], args.tol)
    report.check("train-fwd: float32 gradients (relative; a ReLU kink within rounding flips)", worst["grads"],
                 args.tol_grad32)
    report.check("train-fwd: teacher at batch 1, ours vs release (relative)", teacher["batch 1"], args.tol)
    report.check("train-fwd: release-style batch teacher from our model vs release (relative)", teacher["batch"],
                 args.tol, "the allspark trajectory's teacher")
    report.info("train-fwd: our per-image teacher vs the release's batch teacher", teacher["mixed"], "deliberate")
    check_float64_pass(report, args, release, ours, g)


def check_float64_pass(report: Report, args, release, ours, g: torch.Generator) -> None:
    """One more pass in float64 from the same weights and memory: rounding out of the way, what is left is a
    difference of computation (an instance-norm eps of 1e-3 for 1e-5 moves fp32 logits by 4e-6 only)."""
    release, ours = copy.deepcopy(release).double(), copy.deepcopy(ours).double()
    attn = release.decoder.allspark.attn
    ours.allspark.memory.queue.copy_(attn.kv_queue)  # the fp32 memories differ by rounding
    ours.allspark.memory.ptr.copy_(attn.queue_ptr)
    batch = draw_batch(args, g, torch.float64)
    with torch.no_grad():
        release.eval()
        logits_u = release(batch[2])
    result = student_pass(release, ours, batch, logits_u, args.fwd_steps > args.mem_on)
    report.check("train-fwd: float64 logits (relative)", result["logits"], args.tol_fp64)
    report.check("train-fwd: float64 S-Mem queue (max|d|) and pointers", max(result["queue"], result["ptr"]),
                 args.tol_fp64)
    report.check("train-fwd: float64 gradients (relative; our CE casts logits to float32)", result["grads"],
                 args.tol_fp64_grad)


# ------------------------------------------------------------------------------------------------ losses, metric
def check_losses(report: Report, args, g: torch.Generator) -> None:
    """CE with ignore 255 and the Cityscapes OHEM (the release's util/ohem.py) against `labeled_loss`."""
    import importlib

    from allspark.engine.losses import labeled_loss

    ohem = importlib.import_module("util.ohem").ProbOhemCrossEntropy2d
    logits = 3 * torch.randn(2, args.classes, 97, 97, generator=g)
    target = torch.randint(0, args.classes, (2, 97, 97), generator=g)
    target[:, :10] = IGNORE
    valid = int((target != IGNORE).sum())
    reference = F.cross_entropy(logits, target, ignore_index=IGNORE)
    worst = relative(reference, labeled_loss(logits, target, "ce", 0.7, 200000))
    # more than every valid pixel; 97 %: the kth probability becomes the threshold; 5 %: 0.7 stays the threshold
    for min_kept in (200000, int(0.97 * valid), valid // 20):
        reference = ohem(ignore_index=IGNORE, thresh=0.7, min_kept=min_kept)(logits, target.clone())
        worst = max(worst, relative(reference, labeled_loss(logits, target, "ohem", 0.7, min_kept)))
    report.check("losses: CE, OHEM at min_kept 200000 / 97 % / 5 % of the valid pixels (relative)", worst, args.tol)
    reference = ohem(ignore_index=IGNORE, thresh=0.7, min_kept=0)(logits, target.clone())
    report.info("losses: OHEM at min_kept 0 (no config uses it; the release keeps every pixel)",
                relative(reference, labeled_loss(logits, target, "ohem", 0.7, 0)))


def check_metric(report: Report, official, args, g: torch.Generator) -> None:
    """Per-class IoU and mIoU: the release's intersectionAndUnion and mean over K against our ConfusionMatrix."""
    from allspark.engine.metrics import ConfusionMatrix

    release = official.load_official()
    worst, present_gap = 0.0, 0.0
    for absent in (None, 0):
        pred = torch.randint(0, args.classes, (3, 60, 80), generator=g)
        mask = torch.randint(0, args.classes, (3, 60, 80), generator=g)
        mask[:, :5] = IGNORE
        if absent is not None:  # a class in neither masks nor predictions
            pred[pred == absent], mask[mask == absent] = absent + 1, absent + 1
        inter, union, _ = release.intersectionAndUnion(pred.numpy(), mask.numpy(), args.classes, IGNORE)
        iou = inter / (union + 1e-10)
        ours, ours_all = ConfusionMatrix(args.classes), ConfusionMatrix(args.classes, miou_over="all")
        ours.update(pred, mask), ours_all.update(pred, mask)
        occurs = union > 0
        worst = max(worst, float(np.abs(iou[occurs] - ours.iou().numpy()[occurs]).max()),
                    abs(float(np.mean(iou)) - ours_all.miou()))
        present_gap = max(present_gap, abs(float(np.mean(iou)) - ours.miou()))
    report.check("metric: per-class IoU, and mIoU with eval.miou_over=all, one class absent or none", worst, 1e-12)
    report.info("metric: mIoU over the classes present (our default) vs over all K", present_gap,
                "differs only when a class is absent")


# ------------------------------------------------------------------------------------------------ trajectories
def release_trajectory(official, release, method: str, batches, args) -> list[list[float]]:
    """The release's loop body on each batch, its poly lr set after the step; the losses of each step."""
    optimizer = official.official_optimizer(release, args.lr, args.lr_multi)
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE)
    losses = []
    for i, (images_l, mask, images_u) in enumerate(batches):
        if method == "allspark":
            release.decoder.using_SMem = i >= args.traj_mem_on
            out = official.allspark_step(release, optimizer, images_l, mask, images_u, criterion, criterion)
        elif method == "semi":
            out = official.semi_step(release, optimizer, images_l, mask, images_u, criterion, criterion)
        else:
            out = (official.sup_step(release, optimizer, images_l, mask, criterion),)
        losses.append([float(v) for v in out])
        official.official_poly_lr(optimizer, args.lr, args.lr_multi, i, len(batches))
    return losses


def our_trajectory(ours0, method: str, batches, args, *, release_teacher: bool, release_lr: bool):
    """`Trainer.step` on the same batches from ours0's weights; (trainer, losses of each step). release_lr runs step i
    at the release's lr(max(i - 1, 0)) (its lr is set after the step); release_teacher swaps in `batch_teacher`."""
    from allspark.config.loading import config_from_dict
    from allspark.engine.step import Trainer

    cfg = config_from_dict({"method": method, "model": our_model_config(args, method),
                            "train": {"lr": args.lr, "lr_multi": args.lr_multi, "batch_size": args.batch,
                                      "epochs": 1, "warmup_epochs": 1, **EXACT}})
    trainer = Trainer(cfg, total=len(batches))
    trainer.model.load_state_dict(ours0.state_dict())
    no_dropout(trainer.model, args.attn_dropout)
    if release_teacher and method == "allspark":
        trainer.teacher = batch_teacher(trainer.model)
    losses = []
    for i, (images_l, mask, images_u) in enumerate(batches):
        if release_lr:
            for group in trainer.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * (1 - max(i - 1, 0) / len(batches)) ** 0.9
        batch_u = None if method == "sup" else {"image": images_u, "valid": torch.ones_like(mask, dtype=torch.bool)}
        record = trainer.step({"image": images_l, "mask": mask}, batch_u,
                              use_memory=method == "allspark" and i >= args.traj_mem_on)
        losses.append([record["loss"], record["loss_l"], record["loss_u"]])
    return trainer, losses


def weight_disagreement(release, ours, start: dict) -> float:
    """Worst max|w_ours - w_release| / max|w_release - w_start| over parameters: the disagreement against how far
    training moved that tensor, the movement floored at 1 % of the largest one."""
    from allspark.models.convert import release_to_ours

    final = release_to_ours({k: p.detach() for k, p in release.named_parameters()}).tensors
    initial = release_to_ours(start).tensors
    mine = dict(ours.named_parameters())
    moved = {k: (w - initial[k]).abs().max().item() for k, w in final.items()}
    floor = max(1e-2 * max(moved.values()), 1e-12)
    return max(max_abs(w, mine[k]) / max(moved[k], floor) for k, w in final.items())


def check_trajectories(report: Report, official, args) -> None:
    """--steps SGD steps of sup, semi and allspark from the same weights on the same batches, schedules aligned;
    then each deliberate difference alone, measured: our per-image teacher, our lr set before the step."""
    g = torch.Generator().manual_seed(args.seed + 200)
    batches = [draw_batch(args, g) for _ in range(args.steps)]
    for method in args.methods:
        release, ours0 = build_pair(official, args, method)
        no_dropout(release, 0.0), no_dropout(ours0, args.attn_dropout)
        start = copy.deepcopy(release.state_dict())
        rel_losses, rel_time = timed(lambda: release_trajectory(official, release, method, batches, args))
        variants = {"aligned": (True, True), "per-image teacher": (False, True), "lr before the step": (True, False)}
        chosen = ["aligned"] + {"allspark": ["per-image teacher"], "sup": ["lr before the step"]}.get(method, [])
        for variant in chosen:
            (trainer, losses), our_time = timed(lambda: our_trajectory(
                ours0, method, batches, args, release_teacher=variants[variant][0], release_lr=variants[variant][1]))
            ratio = weight_disagreement(release, trainer.model, start)
            loss_gap = max(abs(r - o) for rs, os_ in zip(rel_losses, losses) for r, o in zip(rs, os_))
            name = f"traj: {method}, {args.steps} steps"
            if variant != "aligned":
                report.info(f"{name}, our {variant}: weights |dw| / movement", ratio,
                            f"deliberate; loss max|d| {loss_gap:.1e}")
                continue
            report.check(f"{name}: final weights, max|dw| / movement", ratio, args.tol_traj,
                         f"s/step release {rel_time / args.steps:.2f}, ours {our_time / args.steps:.2f}")
            report.check(f"{name}: losses of every step (max|d|)", loss_gap, args.tol)


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", default=REFERENCE, help="the shared/reference folder")
    p.add_argument("--quick", action="store_true", help="crop 65, 3 + 1 training forwards, 4 trajectory steps")
    p.add_argument("--arch", default="b0", choices=ARCHS)
    p.add_argument("--classes", type=int, default=11)
    p.add_argument("--crop", type=int, default=None, help="training crop, not a multiple of 32 (the release's "
                   "memory is (crop // 32 + 1)^2 tokens); default 161, 65 with --quick")
    p.add_argument("--batch", type=int, default=2, help="labeled and unlabeled images per step, each")
    p.add_argument("--fwd-steps", type=int, default=None, help="training forwards compared (default 6, quick 4)")
    p.add_argument("--mem-on", type=int, default=None, help="the forward from which S-Mem is read (default 3, quick 2)")
    p.add_argument("--steps", type=int, default=None, help="trajectory length (default 12, quick 4; 0: none)")
    p.add_argument("--methods", default="sup,semi,allspark", help="trajectories to run")
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--lr-multi", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--attn-dropout", type=float, default=1e-9, help="our attention dropout in the comparisons")
    p.add_argument("--tol", type=float, default=1e-4, help="float32 logits, losses and S-Mem (relative or max|d|)")
    p.add_argument("--tol-fp64", type=float, default=1e-8, help="float64 logits and S-Mem")
    p.add_argument("--tol-fp64-grad", type=float, default=1e-6, help="float64 gradients (relative)")
    p.add_argument("--tol-grad32", type=float, default=5e-2, help="float32 gradients (relative): loose, a ReLU "
                   "pre-activation within rounding of 0 flips its kink and moves upstream gradients by ~1e-3")
    p.add_argument("--tol-traj", type=float, default=1e-2, help="aligned trajectories: final max|dw| over the "
                   "tensor's own movement")
    args = p.parse_args(argv)
    quick = args.quick
    args.crop = args.crop or (65 if quick else 161)
    args.fwd_steps = args.fwd_steps if args.fwd_steps is not None else (4 if quick else 6)
    args.mem_on = args.mem_on if args.mem_on is not None else (2 if quick else 3)
    args.steps = args.steps if args.steps is not None else (4 if quick else 12)
    args.traj_mem_on = args.steps // 2
    args.methods = [m for m in args.methods.split(",") if m]
    if args.crop % 32 == 0:
        p.error(f"--crop {args.crop}: the release sizes its memory as (crop // 32 + 1)^2 tokens, which a multiple "
                "of 32 does not give; use e.g. 161")
    unknown = set(args.methods) - {"sup", "semi", "allspark"}
    if unknown:
        p.error(f"--methods: unknown {', '.join(sorted(unknown))} (sup, semi, allspark)")
    c = args.crop
    args.infer_sizes = [(c, c)] * (1 if quick else 3) + ([(97, 129)] if quick else [(150, 200), (200, 150), (97, 129)])
    args.sliding_sizes = [(120, 160)] if quick else [(250, 360), (161, 483)]
    return args


def run_checks(report: Report, official, args) -> None:
    """Every check, in the order of the printed lines."""
    g = torch.Generator().manual_seed(args.seed + 100)
    release, ours = build_pair(official, args)
    check_structure(report, args, release, ours)
    check_inference(report, args, release, ours, g)
    check_sliding(report, args, release, ours, g)
    check_memory_update(report, release, g)
    check_training_forward(report, official, args, g)
    check_losses(report, args, g)
    check_metric(report, official, args, g)
    if args.steps:
        check_trajectories(report, official, args)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # the release's InstanceNorm is built with a channel count it does not use; torch warns on every call
    warnings.filterwarnings("ignore", message=".*input's size at dim=1 does not match num_features")
    official = import_harness(args.reference, "official", "fidelity_allspark")
    official.load_official()
    import allspark

    print(f"AllSpark fidelity: release {official.OFFICIAL_ROOT} vs allspark {allspark.__version__} "
          f"({allspark.__file__}); MiT-{args.arch.upper()}, {args.classes} classes, crop {args.crop}, batch "
          f"{args.batch}+{args.batch}, seed {args.seed}, {torch.get_num_threads()} thread(s)")
    report = Report()
    print(f"time: {seconds(lambda: run_checks(report, official, args)):.0f} s")
    print("fidelity: PASS" if not report.failed else "fidelity: FAIL " + "; ".join(report.failed))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
