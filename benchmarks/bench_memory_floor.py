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
from torch.autograd.function import once_differentiable

import allspark.models.allspark as allspark_module
from allspark.models.allspark import _fused_attention
from bench_train import build, make_parser  # benchmarks/ is the script's directory, hence on sys.path

CHUNKED = allspark_module.chunked_dropout_attention


def flash_without_dropout(q, k, v, dropout_p):
    """Bound 1: the same attention through SDPA's fused CPU kernel, dropout left out."""
    return _fused_attention(q[None, None], k[None, None], v[None, None], 0.0)[0, 0]


class _ProductsOnly(torch.autograd.Function):
    """Bound 2: the six (n x m x d) products of an exact attention that keeps the map for backward; the map is
    the raw scores (no softmax, no dropout), so outputs and gradients are meaningless, only the cost counts."""

    @staticmethod
    def forward(ctx, q, k, v):
        scores = q @ k.mT
        ctx.save_for_backward(q, k, v, scores)
        return scores @ v

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, scores = ctx.saved_tensors
        grad_scores = grad_out @ v.mT
        return grad_scores @ k, grad_scores.mT @ q, scores.mT @ grad_out


def products_only(q, k, v, dropout_p):
    return _ProductsOnly.apply(q, k, v)


ROWS = {  # row: (setting of bench_train, memory attention)
    "semi": ("semi", CHUNKED),
    "allspark, memory off": ("allspark (memory off)", CHUNKED),
    "allspark, memory on": ("allspark (memory on)", CHUNKED),
    "memory on, flash without dropout (bound)": ("allspark (memory on)", flash_without_dropout),
    "memory on, six products alone (bound)": ("allspark (memory on)", products_only),
}


def main() -> None:
    args = make_parser(__doc__.splitlines()[0]).parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    built = {name: build(name, args) for name in {setting for setting, _ in ROWS.values()}}
    times = {row: [] for row in ROWS}
    for i in range(args.warmup + args.iters):
        for row, (setting, attention) in ROWS.items():
            trainer, batch_l, batch_u, use_memory = built[setting]
            allspark_module.chunked_dropout_attention = attention
            started = time.perf_counter()
            trainer.step(batch_l, batch_u, i, 10**6, use_memory)
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
