"""What UniMatch V2's loop and the AllSpark module under it buy on the demo data, over seeds (issue 19, item 6).

Rows, all from parity_v2.py's DINOv2-small + DPT source encoder, its demo data and its budget (our runs of
parity_v2.py are the same commands and are not run again): `sup` (the release's supervised.py), `unimatch_v2`
(method semi) and `allspark_v2` (method allspark) under recipe=unimatch_v2. For reference, MiT-B0 with the
demo's recipe from benchmarks/results/demo_seeds/data0 (the demo's own encoder, crop and budget: not the same
start). Per row: each seed's final mIoU (the EMA teacher's where there is one), mean, sample sd and, against
`sup` at the same seed, the paired difference's mean with its 95 % t-interval. Two runs at a time, one thread each.

    python -m benchmarks.studies.study_v2 --seeds 0 1 2 3 4      # after parity_v2.py (data and encoder), 150 iterations
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.fidelity.parity_v2 import finished, our_command, our_labeled_loss, our_result, run
from benchmarks.studies.demo_seeds import interval
from benchmarks.timing import RESULTS, add_precision_option, precision_suffix

ROWS = {"sup": "sup", "unimatch_v2": "semi", "allspark_v2": "allspark"}  # row -> our method, all recipe=unimatch_v2
REFERENCE = RESULTS / "demo_seeds" / "data0" / "results.json"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/parity_v2"), help="parity_v2.py's folder")
    p.add_argument("--results", type=Path, default=RESULTS / "study_v2", help="the summary, committed")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--iters", type=int, default=150, help="iterations of every row (parity_v2.py's)")
    p.add_argument("--crop", type=int, default=56, help="a multiple of 14")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="rows to train (sup always)")
    add_precision_option(p)
    args = p.parse_args()
    rows_run = {row: ROWS[row] for row in ROWS if row in args.rows or row == "sup"}  # sup: the paired reference
    tag = precision_suffix(args.precision)
    out = args.out.resolve()
    data, encoder = out / "demo_data", out / "source_encoder" / "checkpoints" / "latest.safetensors"
    if not encoder.is_file():
        sys.exit(f"study_v2: {encoder} is missing; run benchmarks.fidelity.parity_v2 first (the data and the encoder)")
    args.results.mkdir(parents=True, exist_ok=True)
    jobs = []
    for seed in args.seeds:
        for row, method in rows_run.items():
            run_dir = out / f"ours_{row}_s{seed}{tag}"
            if not finished(run_dir):  # a killed run resumes: `allspark train` continues its folder
                jobs.append((our_command(args, method, seed, data, encoder, run_dir),
                             out / f"ours_{row}_s{seed}{tag}.log"))
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda job: run(*job), jobs))
    results = {row: {seed: our_result(out / f"ours_{row}_s{seed}{tag}", method) for seed in args.seeds}
               for row, method in rows_run.items()}
    losses = {row: {seed: our_labeled_loss(out / f"ours_{row}_s{seed}{tag}") for seed in args.seeds}
              for row in rows_run}
    reference = {int(seed): value for seed, value in
                 json.loads(REFERENCE.read_text())["miou"]["allspark_recipe"].items()}
    (args.results / "summary.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "miou": results, "labeled_loss_last_50": losses,
         "reference_mit_b0_recipe": reference}, indent=1))
    print(f"demo data, {args.iters} iterations at crop {args.crop}, batch 4 (+4), DINOv2-small + DPT from one source "
          f"encoder, recipe=unimatch_v2; final mIoU %")
    print("| row | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean | sd | vs sup: paired mean ± 95 % |")
    print("|---|" + "---|" * (len(args.seeds) + 3))
    rows = {**results, "MiT-B0 + demo recipe (reference: the demo's start, crop 96, budget)": reference}
    for row, per_seed in rows.items():
        values = [per_seed[s] for s in args.seeds]
        paired = "" if row == "sup" or row not in results else "{:+.2f} ± {:.2f}".format(
            *interval([per_seed[s] - results["sup"][s] for s in args.seeds]))
        print(f"| {row} | " + " | ".join(f"{v:.2f}" for v in values)
              + f" | {statistics.mean(values):.2f} | {statistics.stdev(values):.2f} | {paired} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
