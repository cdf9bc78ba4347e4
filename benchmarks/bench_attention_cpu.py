"""Time the labeled cross-attention over the memory on the CPU (forward + backward, dropout 0.1): chunked
attention vs SDPA's math path (what CPU SDPA runs with dropout), and two lower bounds that are not the method:
SDPA's fused flash kernel without dropout, and the six matrix products alone (scores, A @ V; dA, dV, dQ, dK)
that any exact fp32 attention must compute, with and without allocating the map. Variants run interleaved in one process; prints median and
fastest of the repeats.

    .venv/bin/python benchmarks/bench_attention_cpu.py [--threads 1] [--repeats 9] [--dim 36]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from allspark.models.allspark import _fused_attention
from allspark.models.chunked_attention import chunked_dropout_attention
from attention_bounds import flash_without_dropout, products_only  # benchmarks/ is on sys.path (script dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1024, help="B * C * H query rows (MiT-B0: 2 * 256 * 2)")
    parser.add_argument("--keys", type=int, default=10752, help="K * C * H memory keys (21 * 256 * 2)")
    parser.add_argument("--dim", type=int, default=36, help="tokens d (crop 161: 6 x 6)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n, m, d = args.queries, args.keys, args.dim
    torch.manual_seed(0)
    q = (torch.randn(n, d) / d**0.5).requires_grad_()
    k, v = (torch.randn(m, d).requires_grad_() for _ in range(2))
    grad = torch.randn(n, d)

    def through_autograd(attention, dropout_p):
        def run():
            attention(q, k, v, dropout_p).backward(grad)
            q.grad = k.grad = v.grad = None
        return run

    def sdpa_math_path(q, k, v, dropout_p):
        return _fused_attention(q[None, None], k[None, None], v[None, None], dropout_p)[0, 0]

    scores = torch.empty(n, m)

    @torch.no_grad()
    def products_in_place():
        """The same six products as products_only, without allocating the (n x m) map and its gradient."""
        torch.mm(q, k.mT, out=scores)
        scores @ v
        torch.mm(grad, v.mT, out=scores)
        scores @ k, scores.mT @ q, scores.mT @ grad

    variants = {"chunked, dropout 0.1": through_autograd(chunked_dropout_attention, 0.1),
                "SDPA math path, dropout 0.1": through_autograd(sdpa_math_path, 0.1),
                "SDPA flash, no dropout (bound)": through_autograd(flash_without_dropout, 0.1),
                "six fp32 matrix products, through autograd (stand-in of bench_memory_floor)":
                    through_autograd(products_only, 0.1),
                "six fp32 matrix products into preallocated buffers (arithmetic alone)": products_in_place}
    times = {name: [] for name in variants}
    for i in range(args.repeats + 1):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            if i:  # the first round warms up
                times[name].append((time.perf_counter() - start) * 1e3)
    print(f"{n} queries x {m} keys, d = {d}, fwd+bwd, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| variant | median (ms) | fastest (ms) |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} |")


if __name__ == "__main__":
    main()
