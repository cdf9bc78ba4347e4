"""What the Semantic Memory costs inside a CPU training step, and the least any exact fp32 attention could cost.

Interleaves `Trainer.step` of semi, AllSpark memory off and memory on, plus memory on with the memory attention
swapped for two stand-ins that are NOT the method and only bound it from below: SDPA's fused flash kernel
without dropout, and the six fp32 matrix products alone (scores, A @ V; dA, dV, dQ, dK) with no softmax and
no dropout. Settings run step by step in turn in one process, so a shared machine slows them alike; medians.

    .venv/bin/python benchmarks/bench_memory_floor.py [--iters 8] [--threads 1]
"""

from __future__ import annotations

import statistics
import time

import torch

import allspark.models.allspark as allspark_module
from attention_bounds import flash_without_dropout, products_only  # benchmarks/ is on sys.path (script dir)
from bench_train import build, make_parser

CHUNKED = allspark_module.chunked_dropout_attention


ROWS = {  # row: (setting of bench_train, memory attention)
    "semi": ("semi", CHUNKED),
    "allspark, memory off": ("allspark (memory off)", CHUNKED),
    "allspark, memory on": ("allspark (memory on)", CHUNKED),
    "memory on, flash without dropout (bound)": ("allspark (memory on)", flash_without_dropout),
    "memory on, six products alone (bound)": ("allspark (memory on)", products_only),
}


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    if args.device != "cpu":
        parser.error("the stand-ins replace the CPU path of the memory attention: run with --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    built = {name: build(name, args) for name in {setting for setting, _ in ROWS.values()}}
    times = {row: [] for row in ROWS}
    for i in range(args.warmup + args.iters):
        for row, (setting, attention) in ROWS.items():
            trainer, batch_l, batch_u, use_memory = built[setting]
            allspark_module.chunked_dropout_attention = attention
            started = time.perf_counter()
            trainer.step(batch_l, batch_u, use_memory)
            if i >= args.warmup:
                times[row].append((time.perf_counter() - started) * 1e3)
    allspark_module.chunked_dropout_attention = CHUNKED
    semi = statistics.median(times["semi"])
    print(f"{args.encoder}, crop {args.crop}, batch {args.batch}+{args.batch}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, {args.iters} interleaved rounds")
    print("| setting | median ms/it | fastest | / semi |\n|---|---|---|---|")
    for row, values in times.items():
        print(f"| {row} | {statistics.median(values):.1f} | {min(values):.1f} | "
              f"{statistics.median(values) / semi:.2f}x |")


if __name__ == "__main__":
    main()
