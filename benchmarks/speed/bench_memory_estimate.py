"""The memory estimate of a training step (engine/memory_budget.py) against the peak one step measures on the CPU.

The measured figure is bench_fit_memory's (a process of its own, glibc returning large frees, the peak during one
step minus the memory before it: weights and optimizer state not counted); the estimate is what `train` compares
with the free memory before the first step (weights and optimizer state counted), so it must not fall below it.

    PYTHONPATH=src .venv/bin/python -m benchmarks.speed.bench_memory_estimate --threads 1
"""
from __future__ import annotations

import argparse
import time

from benchmarks.speed.bench_fit_memory import CASES, child_figure


def estimate_mib(args, case: str) -> tuple[float, float]:
    """(the estimate in MiB, seconds it took) for bench_fit_memory's config of `case`."""
    from allspark.config.loading import load_config
    from allspark.engine.memory_budget import training_step_bytes

    accumulate, recompute = CASES[case]
    cfg = load_config("demo", ["method=allspark", f"model.encoder={args.encoder}", f"model.crop_size={args.crop}",
                               "model.num_classes=21", f"train.batch_size={args.batch // accumulate}",
                               f"train.accumulate={accumulate}", f"train.activation_checkpointing={recompute}",
                               "run_dir=runs/bench_memory_estimate"])
    started = time.perf_counter()
    return training_step_bytes(cfg) / 2**20, time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", default="mit_b0")
    p.add_argument("--batch", type=int, default=2, help="labeled and unlabeled images per step, each")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--crops", default="64,128,192,256", help="comma-separated; the last one also with checkpointing")
    args = p.parse_args()
    args.steps = 1
    print(f"{args.encoder}, {args.batch} + {args.batch} images per step, AllSpark with the memory read")
    print("| crop | case | measured step (MiB) | estimate (MiB) | estimate / measured | estimate took (s) |")
    print("|---|---|---|---|---|---|")
    crops = [int(crop) for crop in args.crops.split(",")]
    for crop, case in [(crop, "one batch") for crop in crops] + [(crops[-1], "activation checkpointing")]:
        args.crop = crop
        measured = child_figure(args, case, "memory")
        estimate, seconds = estimate_mib(args, case)
        print(f"| {crop} | {case} | {measured:.0f} | {estimate:.0f} | {estimate / measured:.2f} | {seconds:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
