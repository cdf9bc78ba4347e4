"""The default thread count on a busy machine: seconds per training step with the default setting against
`--threads 1`, each in a fresh process, while `--busy` single-threaded spinners hold cores.

    .venv/bin/python benchmarks/bench_threads.py [--busy 1] [--steps 10] [--crop 96]

The default (`commands.options.set_threads` without `--threads`) takes the cores free at start; the
target is that it is never more than 1.3x slower than `--threads 1` when another job holds a core.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SPINNER = "while True: pass"


def measure(args: argparse.Namespace) -> None:
    """In this (child) process: set the threads as `allspark train` does, then time `--steps` Trainer steps."""
    import torch

    from allspark.commands.options import set_threads
    from allspark.config.loading import load_config
    from allspark.engine.step import Trainer

    set_threads(argparse.Namespace(threads=args.threads))
    cfg = load_config("demo", [f"model.crop_size={args.crop}", "model.num_classes=4", "train.batch_size=2",
                               "run_dir=runs/bench"])
    torch.manual_seed(0)
    trainer = Trainer(cfg, total=10**6)
    s = args.crop
    batch_l = {"image": torch.randn(2, 3, s, s), "mask": torch.randint(0, 4, (2, s, s))}
    batch_u = {"image": torch.randn(2, 3, s, s), "valid": torch.ones(2, s, s, dtype=torch.bool)}
    for _ in range(2):  # warm-up
        trainer.step(batch_l, batch_u, use_memory=True)
    started = time.perf_counter()
    for _ in range(args.steps):
        trainer.step(batch_l, batch_u, use_memory=True)
    print(json.dumps({"threads": torch.get_num_threads(), "seconds": (time.perf_counter() - started) / args.steps}))


def run_child(args: argparse.Namespace, threads: int | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the default must not be pinned
    command = [sys.executable, __file__, "--child", "--steps", str(args.steps), "--crop", str(args.crop)]
    done = subprocess.run(command + (["--threads", str(threads)] if threads else []), capture_output=True,
                          text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", type=int, default=1, help="single-threaded spinners running meanwhile")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(args)
        return
    spinners = [subprocess.Popen([sys.executable, "-c", SPINNER]) for _ in range(args.busy)]
    try:
        time.sleep(1.0)  # let the spinners show in the CPU counters
        rows = {"--threads 1": run_child(args, 1), "default": run_child(args, None),
                f"--threads {os.cpu_count()} (all cores, the old default)": run_child(args, os.cpu_count())}
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    base = rows["--threads 1"]["seconds"]
    print(f"{os.cpu_count()} cores, {args.busy} busy spinner(s), AllSpark MiT-B0 crop {args.crop}, batch 2 + 2")
    print("| setting | threads | s/step | vs --threads 1 |")
    print("|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['threads']} | {row['seconds']:.3f} | {row['seconds'] / base:.2f}x |")


if __name__ == "__main__":
    main()
