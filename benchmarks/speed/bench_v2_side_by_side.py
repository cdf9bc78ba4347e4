"""UniMatch V2's model, ours against the release's: DINOv2 + DPT on the same weights, one process, interleaved.

The release's DPT runs unmodified through the measuring harness (../shared/reference/harness/unimatch_v2.py;
its attention is plain PyTorch here, xformers being absent); ours is the same weights converted with
`allspark.load_official`. Per crop and precision (fp32, and bf16 under CPU autocast): forward + backward of a
cross-entropy loss at the training batch, and inference without autograd at batch 1 and 4; then, in fp32, one
whole step of the UniMatch V2 loop: the harness's `unimatch_v2_step` on the release's model against our
`Trainer.step` (`method=semi recipe=unimatch_v2`) on the same synthetic batches (teacher pass, two strong views
with complementary dropout, AdamW, EMA). Each round runs every case once, in turn, so a shared machine slows them
alike; the table gives medians. `--device cuda` runs both on a GPU (benchmarks/gpu_rows.sh). `--profile` instead prints where the time of two loop steps goes, per side:
the operators with the most self time (torch.profiler).

    .venv/bin/python -m benchmarks.speed.bench_v2_side_by_side --threads 1
    .venv/bin/python -m benchmarks.speed.bench_v2_side_by_side --threads 1 --profile --crops 98
    .venv/bin/python -m benchmarks.speed.bench_v2_side_by_side --device cuda --size base --crops 518
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.fidelity.release_harness import import_harness
from benchmarks.timing import REFERENCE, interleave, medians


def training(model, images, labels, amp: bool):
    """One forward + backward of a CE loss, as a no-argument callable."""
    model.train()

    def run():
        model.zero_grad(set_to_none=True)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(images)
        F.cross_entropy(logits.float(), labels).backward()
    return run


def inference(model, images, amp: bool):
    def run():
        model.eval()
        with torch.no_grad(), torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
            model(images)
    return run


def loop_steps(v2, args, crop: int, amp: str = "off") -> dict:
    """No-argument callables, one v2-loop step each side on the same next batch (cycling through a few); ours
    under `train.amp=amp`, the release in fp32 (it has no other)."""
    from allspark.data.splits import make_split
    from allspark.data.synthetic import generate_synthetic
    from allspark.distributed import DistInfo
    from allspark.engine.step import Trainer
    from benchmarks.fidelity.fidelity_v2_training import batches, config

    tmp = Path(tempfile.mkdtemp(prefix="bench_v2_"))
    classes = 4  # the synthetic set's; the loop's cost hardly depends on it
    root = generate_synthetic(tmp / "data", num_train=4 + 4 * args.batch, num_val=1, size=crop, seed=0,
                              num_classes=classes)
    make_split(root / "train.txt", root / "splits", count=4, seed=0)
    settings = argparse.Namespace(classes=classes, crop=crop, batch=args.batch, seed=0, encoder=f"dinov2_{args.size}")
    cfg = config(root, "semi", settings)
    cfg.train.amp = amp
    device = torch.device(getattr(args, "device", "cpu"))
    pairs = [tuple({k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()} for b in pair)
             for pair in batches(cfg, 4, True)]
    total = 10 ** 6
    trainer = Trainer(cfg, DistInfo(device=device), total=total)
    release = v2.build_model(args.size, classes).to(device)
    ema, optimizer = v2.make_ema(release), v2.make_optimizer(release, cfg.train.lr, cfg.train.lr_multi)
    state = {"ours": 0, "release": 0}

    def ours():
        batch_l, batch_u = pairs[state["ours"] % len(pairs)]
        state["ours"] += 1
        trainer.step(batch_l, batch_u, use_memory=False)

    def theirs():
        batch_l, batch_u = pairs[state["release"] % len(pairs)]
        i = state["release"]
        state["release"] += 1
        ignore = (~batch_u["valid"]).long() * 255
        v2.unimatch_v2_step(release, ema, optimizer, (batch_l["image"], batch_l["mask"]),
                            (batch_u["image"], batch_u["strong"], batch_u["strong2"], ignore, batch_u["box"].long(),
                             batch_u["box2"].long()), conf_thresh=0.95, iters=i, total_iters=total,
                            lr=cfg.train.lr, lr_multi=cfg.train.lr_multi)
    return {("UniMatch V2 loop step", "release"): theirs, ("UniMatch V2 loop step", "ours"): ours}


def profile_steps(steps: dict, rows: int = 12) -> None:
    """Two warm-up and two profiled loop steps per side; each side's operators by self CPU time."""
    from torch.profiler import ProfilerActivity, profile
    for (_, side), step in steps.items():
        step(), step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(), step()
        print(f"{side}: two steps\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", default=REFERENCE, help="the shared/reference folder")
    p.add_argument("--size", default="small", choices=["small", "base"])
    p.add_argument("--crops", nargs="+", type=int, default=[98, 224], help="multiples of 14")
    p.add_argument("--batch", type=int, default=2, help="training batch")
    p.add_argument("--classes", type=int, default=21)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--profile", action="store_true", help="profile two loop steps per side at the first crop")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import allspark
    v2 = import_harness(args.reference, "unimatch_v2", "bench_v2_side_by_side")
    v2.load_release()
    if args.profile:
        profile_steps(loop_steps(v2, args, args.crops[0]))
        return 0
    torch.manual_seed(0)
    release = v2.build_model(args.size, args.classes).to(args.device)
    ours = allspark.load_official(release.state_dict(), {
        "method": "sup", "model": {"encoder": f"dinov2_{args.size}", "head": "dpt", "ablation": "none",
                                   "num_classes": args.classes, "crop_size": 518}}).to(args.device)
    load = os.getloadavg()[0]
    generator = torch.Generator().manual_seed(0)
    print(f"DINOv2-{args.size} + DPT, {args.classes} classes, {torch.get_num_threads()} thread(s), torch "
          f"{torch.__version__}, medians of {args.rounds} interleaved rounds (ms); load average {load:.1f} at the start")
    print("| case | crop | precision | release ms | ours ms | ours / release speed |")
    print("|---|---|---|---|---|---|")
    for crop in args.crops:
        for amp in (False, True):
            train_images = torch.randn(args.batch, 3, crop, crop, generator=generator).to(args.device)
            labels = torch.randint(0, args.classes, (args.batch, crop, crop), generator=generator).to(args.device)
            cases = {}
            for side, model in (("release", release), ("ours", ours)):
                cases[(f"forward + backward, batch {args.batch}", side)] = training(model, train_images, labels, amp)
                for batch in (1, 4):
                    images = torch.randn(batch, 3, crop, crop, generator=generator).to(args.device)
                    cases[(f"inference, batch {batch}", side)] = inference(model, images, amp)
            if not amp:
                cases.update(loop_steps(v2, args, crop))
            sync = torch.cuda.synchronize if torch.device(args.device).type == "cuda" else None
            times = medians(interleave(cases, args.rounds, args.warmup, sync))
            for case in dict.fromkeys(name for name, _ in cases):
                theirs, mine = times[(case, "release")], times[(case, "ours")]
                batch = f", batch {args.batch} + {args.batch}" if "loop" in case else ""
                print(f"| {case}{batch} | {crop} | {'bf16' if amp else 'fp32'} | {theirs * 1e3:.1f} | {mine * 1e3:.1f} | "
                      f"{theirs / mine:.2f}x |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
