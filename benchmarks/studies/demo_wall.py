"""`allspark demo`'s wall time in the package's default precision against fp32 (EXACT), interleaved by part.

    OMP_NUM_THREADS=1 python -m benchmarks.studies.demo_wall --out runs/demo_seeds --seed 0

The demo is four parts: the demo set and source set generated and the source encoder trained, then its three
rows. Each part runs in its own process on one thread, first in EXACT, then in the default, so a shared machine's
load hits both precisions alike. The EXACT side writes where `demo_seeds` does (OUT/source_encoder,
OUT/data0_seed<seed>/<row>: its runs count as demo_seeds' exact rows), the default side under OUT/wall_default.
The JSON (--results) is written after every part; a part it already holds is not run again, so the script
resumes. Prints per part its seconds in each precision and the load average before and after it, then each
precision's demo table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.timing import EXACT_OVERRIDES, RESULTS, precision_overrides

SIDES = ("exact", "default")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo_seeds", help="data, encoders and run folders")
    p.add_argument("--seed", type=int, default=0, help="training seed of the rows")
    p.add_argument("--results", default=str(RESULTS / "demo_wall" / "results.json"), help="the JSON written")
    p.add_argument("--parts", nargs="+", default=None, choices=("encoder", "sup", "allspark", "allspark_recipe"),
                   help="run only these parts now, in this order (encoder, "
                   "sup, allspark, allspark_recipe; default: all); the tables need every part")
    p.add_argument("--encoder-only", choices=SIDES, default=None, help=argparse.SUPPRESS)  # a part's own process
    return p.parse_args()


def folders(out: Path, side: str, seed: int) -> tuple[Path, Path, Path]:
    """(encoder parent, demo data, rows' parent) of one precision's demo."""
    base = out if side == "exact" else out / "wall_default"
    return base, base / "demo_data0", base / f"data0_seed{seed}"


def prepare_and_encode(out: Path, side: str, seed: int) -> None:
    """The demo's first part in this process: the data (when missing) and the source encoder."""
    import torch

    from allspark.config.loading import load_config
    from allspark.demo import prepare_demo_data, pretrain_source_encoder

    torch.set_num_threads(1)
    base, data, _ = folders(out, side, seed)
    prepare_demo_data(data, load_config("demo").model.num_classes, 0)
    pretrain_source_encoder(base, extra=EXACT_OVERRIDES if side == "exact" else (), progress=False)


def load() -> float:
    """The one-minute load average."""
    return os.getloadavg()[0]


def run_part(command: list[str], log: Path) -> float:
    """Seconds of `command` on one thread, its output in `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w") as handle:
        subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - started


def part_commands(out: Path, seed: int, side: str) -> dict[str, tuple[list[str], Path]]:
    """{part: (command, log)} of one precision's demo."""
    from allspark.demo import DEMO_RUNS, demo_overrides
    from allspark.runs.folder import RunFolder

    base, data, rows = folders(out, side, seed)
    parts = {"encoder": ([sys.executable, "-m", "benchmarks.studies.demo_wall", "--out", str(out), "--seed",
                          str(seed), "--encoder-only", side], base / "source_encoder.log")}
    encoder = RunFolder(base / "source_encoder").weights("latest")
    for run, (preset, _) in DEMO_RUNS.items():
        overrides = [*demo_overrides(run, rows, data, None, encoder, seed), *precision_overrides(side)]
        parts[run] = ([sys.executable, "-m", "allspark", "train", preset, *overrides, "--threads", "1",
                       "--no-progress"], rows / f"{run}.log")
    return parts


def table(out: Path, seed: int, side: str, seconds: dict[str, float]) -> str:
    """The demo's table of one precision, as `allspark demo` prints it."""
    from allspark.demo import DEMO_RUNS, format_demo_table
    from allspark.runs.metrics import read_metrics

    rows = folders(out, side, seed)[2]
    results = {}
    for run in DEMO_RUNS:
        val = [r for r in read_metrics(rows / run) if r.get("split") == "val"]
        results[run] = {"miou": val[-1]["miou"], "best_miou": max(r["miou"] for r in val),
                        "iteration": val[-1]["iter"], "seconds": seconds[run], "run_dir": rows / run}
    return format_demo_table(results)


def main() -> None:
    args = parse_args()
    out = Path(args.out).resolve()
    if args.encoder_only:
        prepare_and_encode(out, args.encoder_only, args.seed)
        return
    commands = {side: part_commands(out, args.seed, side) for side in SIDES}
    results = Path(args.results)
    record = json.loads(results.read_text()) if results.is_file() else {"seed": args.seed, "parts": {}}
    results.parent.mkdir(parents=True, exist_ok=True)
    for part in args.parts or commands["exact"]:
        for side in SIDES:
            if side not in record["parts"].setdefault(part, {}):
                before = load()
                took = run_part(*commands[side][part])
                record["parts"][part][side] = {"seconds": took, "load_before": before, "load_after": load()}
                results.write_text(json.dumps(record, indent=1) + "\n")
            took, before, after = (record["parts"][part][side][k] for k in ("seconds", "load_before", "load_after"))
            print(f"{part:<16} {side:<8} {took:8.1f} s  load {before:.2f} -> {after:.2f}", flush=True)
    if set(record["parts"]) != set(commands["exact"]):
        return
    for side in SIDES:
        total = sum(p[side]["seconds"] for p in record["parts"].values())
        record[side] = {"seconds": total, "table": table(out, args.seed, side,
                                                           {k: v[side]["seconds"] for k, v in record["parts"].items()})}
        print(f"\n{side}: {total:.1f} s in all\n{record[side]['table']}")
    record["ratio_exact_over_default"] = record["exact"]["seconds"] / record["default"]["seconds"]
    print(f"\nexact / default: {record['ratio_exact_over_default']:.2f}x")
    results.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
