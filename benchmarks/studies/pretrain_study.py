"""What `allspark pretrain` buys on CamVid (issue 29.5, the part this CPU affords): MiT-B0 from random weights
against MiT-B0 pretrained by masked image modelling on camvid-mini's training images (labels unused), each then
trained as SupBaseline on the camvid_proxy 1/8 split at the same budget, several seeds, scored on val.

    OMP_NUM_THREADS=1 python -m benchmarks.studies.pretrain_study --data ../shared/data/camvid-mini \\
        --out runs/pretrain_study --pretrain-iters 2000 --iters 1000 --seeds 0 1 2

The pretraining is one `allspark pretrain` run (OUT/mim), its CPU time measured; each SupBaseline row is one
`camvid_proxy` run (OUT/random, OUT/mim_sup) with that script's settings. Finished runs are not run again, so the
script resumes. OUT/results.md and .json hold the per-seed rows, their mean and spread and the pretraining's cost.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.timing import EXACT_OVERRIDES, SHARED

STARTS = {"random": "MiT-B0 from random weights", "mim_sup": "MiT-B0 after MIM on CamVid train (labels unused)"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED / "data" / "camvid-mini"))
    p.add_argument("--out", default="runs/pretrain_study")
    p.add_argument("--pretrain-iters", type=int, default=2000)
    p.add_argument("--pretrain-batch", type=int, default=8)
    p.add_argument("--pretrain-crop", type=int, default=96)
    p.add_argument("--iters", type=int, default=1000, help="SupBaseline's budget per row")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    return p.parse_args()


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pretrain(args: argparse.Namespace, out: Path) -> dict:
    """The MIM run (resumed or skipped when done) and its cost, kept in OUT/mim_cost.json."""
    cost_file = out / "mim_cost.json"
    if cost_file.is_file():
        return json.loads(cost_file.read_text())
    data = Path(args.data).resolve()
    command = [sys.executable, "-m", "allspark", "pretrain", "camvid/sup", "model.pretrained=null", f"data.root={data}",
               f"run_dir={out / 'mim'}", "data.workers=0", "train.log_every=100", *EXACT_OVERRIDES,  # as committed
               "--images", str(data / "train.txt"),
               "--iters", str(args.pretrain_iters), "--batch-size", str(args.pretrain_batch), "--crop",
               str(args.pretrain_crop), "--device", "cpu", "--threads", "1", "--no-progress"]
    cpu, wall = children_cpu_seconds(), time.time()
    with open(out / "mim.log", "w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
    cost = {"command": " ".join(command[2:]), "cpu_seconds": children_cpu_seconds() - cpu,
            "wall_seconds": time.time() - wall}
    cost_file.write_text(json.dumps(cost, indent=1) + "\n")
    return cost


def supbaseline(args: argparse.Namespace, out: Path, start: str) -> dict[int, float]:
    """camvid_proxy's SupBaseline rows from `start` (random, or the MIM run's encoder): {seed: mIoU %}."""
    command = [sys.executable, "-m", "benchmarks.studies.camvid_proxy", "--data", args.data, "--out", str(out / start),
               "--iters", str(args.iters), "--batch-size", "4", "--lr", "0.005", "--crop", "97", "--device", "cpu",
               "--workers", "0", "--methods", "sup", "--seeds", *map(str, args.seeds)]
    if start == "mim_sup":
        command += ["--pretrained", str((out / "mim").resolve())]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return {seed: json.loads((out / start / f"seed{seed}" / "sup.json").read_text())["miou"] * 100
            for seed in args.seeds}


def table(rows: dict[str, dict[int, float]], seeds: list[int]) -> str:
    lines = ["| SupBaseline from | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | spread |",
             "|---" * (len(seeds) + 3) + "|"]
    for start, values in rows.items():
        cells = " | ".join(f"{values[s]:.2f}" for s in seeds)
        numbers = list(values.values())
        lines.append(f"| {STARTS[start]} | {cells} | {statistics.fmean(numbers):.2f} | "
                     f"{max(numbers) - min(numbers):.2f} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cost = pretrain(args, out)
    rows = {start: supbaseline(args, out, start) for start in STARTS}
    text = (table(rows, args.seeds) + f"\n\nMIM pretraining: {args.pretrain_iters} iterations, batch "
            f"{args.pretrain_batch}, crop {args.pretrain_crop}: {cost['cpu_seconds'] / 3600:.2f} CPU-hours "
            f"({cost['wall_seconds']:.0f} s wall, one thread)")
    print(text)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows, "pretrain": cost}, indent=1))


if __name__ == "__main__":
    main()
