"""Short runs on the demo data that chose the demo recipe's values: SupBaseline, AllSpark with the paper's loop,
and AllSpark with recipe variants, each at the same iteration budget, one run at a time.

    python benchmarks/recipe_check.py --data demo_data --iters 200 --seeds 0 1 --variants sup paper ema99_t07

Each run is `train()` on the `demo` preset with `allspark demo`'s budget overrides (engine/demo.py) plus the
variant's `recipe.*` keys; one JSON line per run (final and best mIoU, seconds) is appended to --results.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

STRONG = ["recipe.strong_views=true", "recipe.cutmix_prob=0.5"]
EMA99 = ["recipe.teacher=ema", "recipe.ema_momentum=0.99"]
VARIANTS = {  # name -> (method, recipe overrides)
    "sup": ("sup", []),
    "paper": ("allspark", []),
    "ema99_t0": ("allspark", STRONG + EMA99),
    "ema99_t07": ("allspark", STRONG + EMA99 + ["recipe.threshold=0.7"]),
    "ema99_t09": ("allspark", STRONG + EMA99 + ["recipe.threshold=0.9"]),
    "stu_t095": ("allspark", STRONG + ["recipe.threshold=0.95"]),
    "strong_ema99_t07": ("allspark", ["recipe.strong_views=true"] + EMA99 + ["recipe.threshold=0.7"]),
    "ema996_t07": ("allspark", STRONG + ["recipe.teacher=ema", "recipe.ema_momentum=0.996", "recipe.threshold=0.7"]),
    "ema99_t07_w2": ("allspark", STRONG + EMA99 + ["recipe.threshold=0.7", "recipe.unlabeled_weight=2"]),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="demo_data", help="the demo data (generated there if missing)")
    p.add_argument("--out", default="runs/recipe_check", help="run directories go to OUT/<variant>_s<seed>_i<iters>")
    p.add_argument("--results", default="runs/recipe_check/results.jsonl")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def run(name: str, seed: int, args: argparse.Namespace) -> dict:
    from allspark.config.loading import load_config
    from allspark.engine.demo import demo_overrides
    from allspark.engine.loop import train

    method, recipe = VARIANTS[name]
    run_dir = Path(args.out) / f"{name}_s{seed}_i{args.iters}"
    overrides = [o for o in demo_overrides(method, run_dir, Path(args.data), args.iters) if not o.startswith("run_dir=")]
    cfg = load_config("demo", [*overrides, f"run_dir={run_dir}", f"train.seed={seed}", *recipe])
    started = time.time()
    result = train(cfg, device="cpu", progress=False)
    return {"name": name, "seed": seed, "iters": args.iters, "miou": round(result["miou"] * 100, 2),
            "best": round(result["best_miou"] * 100, 2), "s": round(time.time() - started), "extra": recipe}


def main() -> None:
    args = parse_args()
    import torch

    from allspark.config.loading import load_config
    from allspark.engine.demo import prepare_demo_data

    torch.set_num_threads(args.threads)
    prepare_demo_data(Path(args.data), load_config("demo").model.num_classes)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for name in args.variants:
            line = run(name, seed, args)
            print(json.dumps(line), flush=True)
            with open(args.results, "a") as handle:
                handle.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
