"""`allspark demo`: synthetic data, SupBaseline vs AllSpark with the same budget, an mIoU table."""
from __future__ import annotations

import argparse
from pathlib import Path

from allspark.commands.options import add_threads_option, set_threads
from allspark.demo import default_folders, format_demo_table, run_demo


def run(args: argparse.Namespace) -> int:
    set_threads(args)
    out, data = default_folders(args.seed, args.data_seed)
    results = run_demo(out=Path(args.out) if args.out else out, data=Path(args.data) if args.data else data,
                       iters=args.iters, seed=args.seed, data_seed=args.data_seed, say=print)
    print("\n" + format_demo_table(results))
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", description="Generate the synthetic demo data (once), pretrain an encoder on a separate "
                                            "synthetic source set, then train SupBaseline, AllSpark with the paper's "
                                            "loop and AllSpark with the recipe on the same budget, and print their "
                                            "mIoU (what `make demo` runs; minutes on a CPU).")
    p.add_argument("--out", default=None, help="parent of the run directories (one per row of the table; default "
                                               "runs/demo, with the seeds in the name when they are not 0)")
    p.add_argument("--data", default=None, help="synthetic dataset folder, generated if missing (default demo_data, "
                                                "with the data seed in the name when it is not 0)")
    p.add_argument("--iters", type=int, default=None, help="training iterations per method (default: the preset)")
    p.add_argument("--seed", type=int, default=0, help="training seed of the three rows (train.seed)")
    p.add_argument("--data-seed", type=int, default=0, help="seed that generates the demo set and its split")
    add_threads_option(p)
    p.set_defaults(run=run)
