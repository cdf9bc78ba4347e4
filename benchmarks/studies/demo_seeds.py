"""The demo's table at several training seeds, with paired differences against SupBaseline: how wide the
demo's claim may be worded.

    python -m benchmarks.studies.demo_seeds --seeds 0 1 2 3 4 [--data-seed 0] [--parallel 2] [--rows sup ...]

Prepares the demo set (`--data-seed`) and the source encoder once (`allspark.demo`, as `allspark demo`), then
runs every row of `allspark demo` at every seed as its own `allspark train` (one thread each; a finished run
is not run again, so the script resumes). Writes OUT/results.json and OUT/results.md: final mIoU per row and
seed, mean and sample standard deviation, and per row the paired difference to SupBaseline (same seed) with
its mean and 95 % t-interval; results.json also the wall seconds of each run's process (a run found finished
takes only its start-up).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.timing import (EXACT_OVERRIDES, RESULTS, add_precision_option, precision_overrides,
                               precision_suffix)

# two-sided 95 % quantiles of Student's t by degrees of freedom (no SciPy here); beyond the table, 1.96
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="training seeds of the rows")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the demo set and its split")
    p.add_argument("--out", default="runs/demo_seeds", help="data, encoder and one run folder per row and seed")
    p.add_argument("--iters", type=int, default=None, help="iterations per row (default: the demo's)")
    p.add_argument("--parallel", type=int, default=2, help="runs at the same time, one thread each")
    p.add_argument("--rows", nargs="+", default=None, help="the rows trained (default: all of the demo's; "
                   "sup, the rows' reference, always)")
    p.add_argument("--results", default=None, help="where results.json and .md go "
                   "(default: benchmarks/results/demo_seeds/data<data seed>)")
    add_precision_option(p)
    return p.parse_args()


def interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95 % t-interval) of `values`."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, float("nan")
    half = T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / len(values) ** 0.5
    return mean, half


def train_row(command: list[str], log: Path) -> float:
    """Wall seconds of one row's training process, its output in `log`."""
    started = time.perf_counter()
    with open(log, "w") as handle:
        subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - started


def final_miou(run_dir: Path) -> float:
    from allspark.runs.metrics import read_metrics

    return [r for r in read_metrics(run_dir) if r.get("split") == "val"][-1]["miou"] * 100


def table(results: dict[str, dict[int, float]], seeds: list[int]) -> str:
    from allspark.demo import DEMO_RUNS

    lines = ["| row | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | sd | vs SupBaseline: paired mean ± 95 % |",
             "|" + "---|" * (len(seeds) + 4)]
    for run, per_seed in results.items():
        values = [per_seed[s] for s in seeds]
        diff = "" if run == "sup" else "{:+.2f} ± {:.2f}".format(
            *interval([per_seed[s] - results["sup"][s] for s in seeds]))
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        lines.append(f"| {DEMO_RUNS[run][1]} | " + " | ".join(f"{v:.2f}" for v in values)
                     + f" | {statistics.mean(values):.2f} | {sd:.2f} | {diff} |")
    return "\n".join(lines)


def main() -> None:
    from allspark.config.loading import load_config
    from allspark.demo import DEMO_RUNS, demo_overrides, prepare_demo_data, pretrain_source_encoder

    args = parse_args()
    out = Path(args.out).resolve()
    results_dir = Path(args.results or RESULTS / "demo_seeds" / f"data{args.data_seed}")
    data = out / f"demo_data{args.data_seed}"
    prepare_demo_data(data, load_config("demo").model.num_classes, args.data_seed)
    encoder = pretrain_source_encoder(out, extra=EXACT_OVERRIDES, progress=False)  # the committed rows' start
    rows = {run: DEMO_RUNS[run] for run in DEMO_RUNS if args.rows is None or run in {"sup", *args.rows}}
    jobs = {}
    for seed in args.seeds:
        for run, (preset, _) in rows.items():
            rows_out = out / f"data{args.data_seed}_seed{seed}{precision_suffix(args.precision)}"
            overrides = [*demo_overrides(run, rows_out, data, args.iters, encoder, seed),
                         *precision_overrides(args.precision)]
            rows_out.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-m", "allspark", "train", preset, *overrides, "--threads", "1", "--no-progress"]
            jobs[(run, seed)] = (command, rows_out / f"{run}.log", rows_out / run)
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = {key: pool.submit(train_row, command, log) for key, (command, log, _) in jobs.items()}
        seconds = {key: future.result() for key, future in futures.items()}
    results = {run: {seed: final_miou(jobs[(run, seed)][2]) for seed in args.seeds} for run in rows}
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "results.json").write_text(json.dumps(
        {"data_seed": args.data_seed, "iters": args.iters, "precision": args.precision, "miou": results,
         "seconds": {run: {seed: seconds[(run, seed)] for seed in args.seeds} for run in rows}}, indent=1) + "\n")
    text = table(results, args.seeds)
    (results_dir / "results.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
