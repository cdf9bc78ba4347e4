"""Peak memory and step time of one training step under train.accumulate and train.activation_checkpointing (CPU).

Each case runs in two processes of its own. The memory run has a fixed glibc mmap threshold (1 MiB), so every
larger tensor goes back to the system when freed and the resident memory follows the live tensors rather than the
allocator's free lists; after a warm-up step the kernel's peak (VmHWM) is reset to the current resident memory
(/proc/self/clear_refs), and the figure is the peak during one step minus the memory before it (model, optimizer
state and batches already there): what the step itself needs. The time run, with the default allocator (fresh
mmaps are slow), gives the median of --steps steps after a warm-up. The same images per optimiser step in every
case (--batch labeled + --batch unlabeled), cut into `accumulate` micro-batches; AllSpark with the memory read.

    .venv/bin/python -m benchmarks.speed.bench_fit_memory --threads 1          # crop 224, 4 + 4 images per step
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

from benchmarks.timing import ROOT, median_seconds

CASES = {  # name: (accumulate, activation checkpointing)
    "one batch": (1, False),
    "accumulate 2": (2, False),
    "accumulate 4": (4, False),
    "activation checkpointing": (1, True),
    "accumulate 4 + checkpointing": (4, True),
}


def resident_kib(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process, KiB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def run_case(args) -> float:
    """In the child: build the trainer, one warm-up step, then the --measure figure (MiB, or seconds per step)."""
    import torch

    from allspark.config.loading import load_config
    from allspark.engine.step import Trainer

    torch.set_num_threads(args.threads)
    accumulate, recompute = CASES[args.case]
    cfg = load_config("demo", ["method=allspark", f"model.encoder={args.encoder}", f"model.crop_size={args.crop}",
                               "model.num_classes=21", f"train.batch_size={args.batch // accumulate}",
                               f"train.accumulate={accumulate}", f"train.activation_checkpointing={recompute}",
                               "run_dir=runs/bench_fit_memory"])
    trainer = Trainer(cfg, total=10**6)
    g = torch.Generator().manual_seed(0)
    b, s = args.batch, args.crop
    batch_l = {"image": torch.randn(b, 3, s, s, generator=g), "mask": torch.randint(0, 21, (b, s, s), generator=g)}
    batch_u = {"image": torch.randn(b, 3, s, s, generator=g), "valid": torch.ones(b, s, s, dtype=torch.bool)}
    trainer.step(batch_l, batch_u, use_memory=True)  # optimizer state now exists
    if args.measure == "memory":
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # VmHWM := VmRSS
        before = resident_kib("VmRSS")
        trainer.step(batch_l, batch_u, use_memory=True)
        return (resident_kib("VmHWM") - before) / 1024
    return median_seconds(lambda: trainer.step(batch_l, batch_u, use_memory=True), args.steps)


def child_figure(args, case: str, measure: str) -> float:
    command = [sys.executable, "-m", __spec__.name, "--case", case, "--measure", measure, "--encoder", args.encoder,
               "--crop", str(args.crop), "--batch", str(args.batch), "--steps", str(args.steps),
               "--threads", str(args.threads)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)} if measure == "memory" else None
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"bench_fit_memory: case {case!r} ({measure}) failed: {done.stderr.strip().splitlines()[-1]}")
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", default="mit_b0")
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batch", type=int, default=4, help="labeled and unlabeled images per optimiser step, each")
    p.add_argument("--steps", type=int, default=3, help="timed steps per case (median), after one warm-up")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)  # a child process's case
    p.add_argument("--measure", choices=("memory", "time"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(run_case(args))
        return
    load = os.getloadavg()[0]
    print(f"{args.encoder}, crop {args.crop}, {args.batch} + {args.batch} images per step, AllSpark with the memory "
          f"read, {args.threads} thread(s), median of {args.steps} steps; load average {load:.1f} at the start")
    print("| case | micro-batch | peak memory of a step (MiB) | step (s) |")
    print("|---|---|---|---|")
    for case, (accumulate, _) in CASES.items():
        memory, seconds = child_figure(args, case, "memory"), child_figure(args, case, "time")
        micro = args.batch // accumulate
        print(f"| {case} | {micro} + {micro} | {memory:.0f} | {seconds:.2f} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
