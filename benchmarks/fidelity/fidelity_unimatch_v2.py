"""UniMatch V2's model: our DINOv2 + DPT against the release's, on the same weights.

The release's DPT (its DINOv2 code and head, built by ../shared/reference/harness/unimatch_v2.py with its own
random init, then moved off it) is converted into ours with `allspark.load_official`, the path users take for
the release's checkpoints. Per DINOv2 size and crop: the logits (batch 2, eval mode), the four intermediate maps,
and the gradients of a cross-entropy loss for every weight; then our `pos_embed: exact` against the release
(equal on the table's own 37 x 37 grid, crop 518, different elsewhere) and the semantics of our complementary
dropout masks; then the training checks of fidelity_v2_training.py (10 steps of the v2 loop and of supervised.py
against the harness's, the EMA teacher's mIoU, the CutMix boxes; `--no-training` leaves them out). One line per
check; the last line is `fidelity: PASS`, or `fidelity: FAIL` with exit status 1.

    .venv/bin/python -m benchmarks.fidelity.fidelity_unimatch_v2 --threads 1          # small + base, crops 98 + 518
    .venv/bin/python -m benchmarks.fidelity.fidelity_unimatch_v2 --threads 1 --quick  # small only
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from benchmarks.fidelity.fidelity_allspark import Report, max_abs, move_off_init, relative
from benchmarks.fidelity.fidelity_v2_training import add_training_arguments, run_training_checks
from benchmarks.fidelity.release_harness import import_harness
from benchmarks.timing import REFERENCE


def our_config(size: str, args, pos_embed: str = "release") -> dict:
    return {"method": "sup", "model": {"encoder": f"dinov2_{size}", "head": "dpt", "ablation": "none",
                                       "num_classes": args.classes, "crop_size": 518, "pos_embed": pos_embed}}


def pair(v2, size: str, args, pos_embed: str = "release"):
    """(release DPT, our segmenter holding its weights), both in eval mode."""
    import allspark
    torch.manual_seed(args.seed)
    release = v2.build_model(size, args.classes)
    move_off_init(release, args.seed)
    ours = allspark.load_official(release.state_dict(), our_config(size, args, pos_embed))
    return release.eval(), ours.eval()


def check_forward(report: Report, v2, size: str, args) -> None:
    release, ours = pair(v2, size, args)
    blocks = release.intermediate_layer_idx[size]
    for crop in args.crops:
        images = torch.randn(args.batch, 3, crop, crop, generator=torch.Generator().manual_seed(crop))
        with torch.no_grad():
            expected, got = release(images), ours(images)
            theirs = release.backbone.get_intermediate_layers(images, blocks)
            mine = ours.encoder(images)
        report.check(f"{size} crop {crop}: logits (batch {args.batch}), max |d|", max_abs(expected, got), args.tol)
        worst = max(max_abs(t, m.flatten(2).transpose(1, 2)) for t, m in zip(theirs, mine))
        report.check(f"{size} crop {crop}: four intermediate maps, max |d|", worst, args.tol)
        check_gradients(report, release, ours, images, size, crop, args)


def gradients(model, images, labels) -> dict:
    model.zero_grad()
    F.cross_entropy(model(images), labels).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def check_gradients(report: Report, release, ours, images, size: str, crop: int, args) -> None:
    """Gradients of the same cross-entropy loss, every release weight against the one it was converted into, in
    float64: in float32 the order of the sums over a 518 crop's pixels alone moves the smallest gradients (the
    position table's) by ~1e-3 relative, which says nothing of the method (printed as info)."""
    from allspark.models.convert import unimatch_v2_to_ours
    labels = torch.randint(0, args.classes, (images.shape[0], crop, crop), generator=torch.Generator().manual_seed(1))
    fp32 = unimatch_v2_to_ours(gradients(release, images, labels))[0].tensors
    mine32 = gradients(ours, images, labels)
    report.info(f"{size} crop {crop}: CE gradients in float32, max relative",
                max(relative(g, mine32[k]) for k, g in fp32.items() if not k.endswith("k_proj.bias")))
    release, ours, images = release.double(), ours.double(), images.double()
    converted, _ = unimatch_v2_to_ours(gradients(release, images, labels))
    mine = gradients(ours, images, labels)
    release.float(), ours.float()
    # a key bias adds the same q.b to every key of a query, which softmax ignores: its true gradient is zero and
    # both sides hold rounding noise, so it is bounded in absolute terms, the rest relative to each tensor's size
    zero = [k for k in converted.tensors if k.endswith("k_proj.bias")]
    worst = max(relative(g, mine[k]) for k, g in converted.tensors.items() if k not in zero)
    report.check(f"{size} crop {crop}: CE gradients (float64) of {len(converted.tensors) - len(zero)} weights, "
                 "max relative", worst, args.grad_tol)
    noise = max(max(converted.tensors[k].abs().max().item(), mine[k].abs().max().item()) for k in zero)
    report.check(f"{size} crop {crop}: key-bias gradients (float64; zero in exact arithmetic), max |g|", noise, 1e-9)


def check_exact_mode(report: Report, v2, args) -> None:
    """pos_embed exact (transformers' resize) equals the release on the 37 x 37 grid only."""
    release, ours = pair(v2, "small", args, pos_embed="exact")
    for crop, same in ((518, True), (98, False)):
        images = torch.randn(1, 3, crop, crop, generator=torch.Generator().manual_seed(crop))
        with torch.no_grad():
            gap = max_abs(release(images), ours(images))
        if same:
            report.check(f"pos_embed exact, crop {crop} (the table's grid): logits max |d|", gap, args.tol)
        else:
            report.info(f"pos_embed exact, crop {crop}: logits max |d| from the release", gap,
                        "why `release` is the default")


def check_comp_drop(report: Report, args) -> None:
    """Each pair of strong views gets channel masks 0/2 and 2/0, or 1/1 for half of the pairs, as the release."""
    from allspark.engine.recipes import complementary_masks
    pairs, channels = 64, 384
    masks = complementary_masks(pairs, channels, torch.Generator().manual_seed(args.seed))
    first, second = masks[:pairs], masks[pairs:]
    values_ok = bool(((first == 0) | (first == 1) | (first == 2)).all())
    report.check("comp_drop: masks of each pair sum to 2 in every channel", max_abs(first + second, torch.full_like(first, 2.0)), 0.0)
    kept = (first == 1).all(1)
    report.check("comp_drop: half of the pairs kept at 1/1 (|share - 0.5|)", abs(kept.float().mean().item() - 0.5), 0.0)
    dropped = first[~kept]
    report.check("comp_drop: the others 0 or 2 per channel (share of other values)",
                 0.0 if values_ok and bool(((dropped == 0) | (dropped == 2)).all()) else 1.0, 0.0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", default=REFERENCE, help="the shared/reference folder")
    p.add_argument("--sizes", nargs="+", default=["small", "base"], choices=["small", "base", "large"])
    p.add_argument("--crops", nargs="+", type=int, default=[98, 518], help="multiples of 14")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--classes", type=int, default=21)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="DINOv2-small only")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--tol", type=float, default=1e-5, help="max absolute difference of outputs, float32")
    p.add_argument("--grad-tol", type=float, default=1e-4, help="max relative difference of gradients")
    p.add_argument("--no-training", action="store_true", help="the model checks only")
    add_training_arguments(p, prefix="train-")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    v2 = import_harness(args.reference, "unimatch_v2", "fidelity_unimatch_v2")
    v2.load_release()
    report = Report()
    for size in (["small"] if args.quick else args.sizes):
        check_forward(report, v2, size, args)
    check_exact_mode(report, v2, args)
    check_comp_drop(report, args)
    if not args.no_training:
        run_training_checks(report, v2, argparse.Namespace(
            **{k.removeprefix("train_"): v for k, v in vars(args).items() if k.startswith("train_")},
            encoder=args.encoder, boxes=args.boxes))
    if report.failed:
        print(f"fidelity: FAIL ({', '.join(report.failed)})")
        return 1
    print("fidelity: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
