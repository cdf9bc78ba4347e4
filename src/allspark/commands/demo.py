"""`allspark demo`: synthetic data, SupBaseline vs AllSpark with the same budget, an mIoU table."""
from __future__ import annotations

import argparse
from pathlib import Path

from allspark.commands.options import add_threads_option, set_threads
from allspark.engine.demo import run_demo


def run(args: argparse.Namespace) -> int:
    set_threads(args)
    run_demo(out=Path(args.out), data=Path(args.data), iters=args.iters)
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", description="Generate the synthetic demo data (once), pretrain an encoder on a separate "
                                            "synthetic source set, then train SupBaseline, AllSpark with the paper's "
                                            "loop and AllSpark with the recipe on the same budget, and print their "
                                            "mIoU (what `make demo` runs; minutes on a CPU).")
    p.add_argument("--out", default="runs/demo", help="parent of the run directories (one per row of the table)")
    p.add_argument("--data", default="demo_data", help="synthetic dataset folder (generated if missing)")
    p.add_argument("--iters", type=int, default=None, help="training iterations per method (default: the preset)")
    add_threads_option(p)
    p.set_defaults(run=run)
