"""One optimiser step on a segmenter's parameters: PyTorch's per-tensor loop (its CPU default), foreach and fused.

Why `engine/optim.py` asks for the fused kernels: the step is a fixed cost per training step, and on the CPU the
default walks the model's tensors one by one. Random gradients, the trainer's hyperparameters; medians.

    .venv/bin/python -m benchmarks.speed.bench_optimizer --threads 1
"""
from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.timing import median_seconds

IMPLEMENTATIONS = {"per-tensor loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
OPTIMIZERS = {"adamw": (torch.optim.AdamW, {"lr": 5e-6, "weight_decay": 0.01}),
              "sgd": (torch.optim.SGD, {"lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4})}


def median_step(params: list[torch.Tensor], optimizer: str, implementation: str, repeats: int) -> float:
    """Median seconds of `repeats` steps after two warm-up steps."""
    cls, hyper = OPTIMIZERS[optimizer]
    opt = cls(params, **hyper, **IMPLEMENTATIONS[implementation])
    return median_seconds(opt.step, repeats, warmup=2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoders", nargs="+", default=["dinov2_small", "mit_b0"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from allspark.config.loading import load_config
    from allspark.models import build_model
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); median ms of {args.repeats} steps")
    print("| encoder (+ head) | tensors | parameters | optimiser | " + " | ".join(IMPLEMENTATIONS) + " |")
    print("|---|---|---|---|" + "---|" * len(IMPLEMENTATIONS))
    for encoder in args.encoders:
        model = build_model(load_config("demo", [f"model.encoder={encoder}", "model.crop_size=224"]))
        params = [p for p in model.parameters() if p.requires_grad]
        for param in params:
            param.grad = torch.randn_like(param)
        for optimizer in OPTIMIZERS:
            times = [median_step(params, optimizer, name, args.repeats) * 1e3 for name in IMPLEMENTATIONS]
            print(f"| {encoder} | {len(params)} | {sum(p.numel() for p in params) / 1e6:.1f} M | {optimizer} | "
                  + " | ".join(f"{t:.1f}" for t in times) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
