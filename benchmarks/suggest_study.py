"""Does labelling what `allspark suggest` picks buy more mIoU than labelling at random? The demo data study.

Round 0: AllSpark + the recommended recipe (`demo_recipe`) on the demo's 6 labeled images, from the
source-pretrained encoder, at training seed S. Round 1: 6 more images, chosen by `allspark suggest` on the
round-0 run (its EMA teacher, `--which latest`) with each strategy, or at random (draws 0..D-1), added with
`allspark splits --add`, and the recipe trained again from the same encoder with the same budget and seed.

    OMP_NUM_THREADS=1 python benchmarks/suggest_study.py --data DEMO_DATA --encoder ENCODER.safetensors \\
        --out runs/suggest_study --results benchmarks/results/suggest --iters 300 --seeds 0 1 2 --draws 3 --parallel 2

Every run is an `allspark` command in a subprocess (--threads 1, --device cpu), its output kept in
RESULTS/logs/; one JSON line per finished run goes to RESULTS/runs.jsonl (final student and EMA mIoU), and
RESULTS/table.md is rewritten from it. Runs already in runs.jsonl are skipped, so an interrupted study continues.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

ADD = 6  # images added in round 1, as many as the demo's labeled set
STRATEGIES = ("both", "uncertainty", "diversity")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the demo data (its splits/labeled.txt has the 6 labeled images)")
    p.add_argument("--encoder", required=True, help="the source-pretrained encoder weights (`allspark demo` makes it)")
    p.add_argument("--out", default="runs/suggest_study")
    p.add_argument("--results", default="benchmarks/results/suggest")
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--draws", type=int, default=3, help="random draws per seed")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--parallel", type=int, default=1, help="runs at a time (each on one thread)")
    p.add_argument("--table-only", action="store_true", help="rewrite RESULTS/table.md from RESULTS/runs.jsonl")
    return p.parse_args()


def allspark(args: list[str], log: Path) -> None:
    """Run `python -m allspark ARGS` with its output in `log`; a failure stops the study with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        code = subprocess.call([sys.executable, "-m", "allspark", *args], stdout=handle, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"allspark {args[0]} failed ({code}); see {log}:\n{log.read_text()[-2000:]}")


def train(name: str, splits: Path, seed: int, a: argparse.Namespace) -> dict:
    """AllSpark + recipe on `splits` (labeled.txt, unlabeled.txt) from the encoder, the same budget for every run:
    `iters` iterations, evaluated once at the end."""
    run_dir = Path(a.out) / name
    data = Path(a.data).resolve()
    unlabeled = len(splits.joinpath("unlabeled.txt").read_text().splitlines())
    epochs = math.ceil(a.iters / (unlabeled // 4))
    allspark(["train", "demo_recipe", f"run_dir={run_dir}", f"data.root={data}",
              f"data.labeled_list={splits.resolve() / 'labeled.txt'}",
              f"data.unlabeled_list={splits.resolve() / 'unlabeled.txt'}", f"model.pretrained={Path(a.encoder).resolve()}",
              f"train.seed={seed}", f"train.max_iters={a.iters}", f"train.epochs={epochs}", f"train.eval_every={epochs}",
              f"train.checkpoint_every={a.iters}", "--threads", "1", "--device", "cpu", "--no-progress"],
             Path(a.results) / "logs" / f"{name}.log")
    val = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"val"' in line][-1]
    return {"run": name, "seed": seed, "iters": a.iters, "miou": round(val["miou"] * 100, 2),
            "miou_ema": round(val.get("miou_ema", float("nan")) * 100, 2)}


def split_with(name: str, base: Path, chosen: Path, a: argparse.Namespace) -> Path:
    """A copy of the round-0 lists with the images of `chosen` moved to labeled (`allspark splits --add`)."""
    splits = Path(a.out) / "splits" / name
    splits.mkdir(parents=True, exist_ok=True)
    for list_name in ("labeled.txt", "unlabeled.txt"):
        shutil.copy(base / list_name, splits / list_name)
    allspark(["splits", "--add", str(chosen), "--out", str(splits), "--root", str(Path(a.data).resolve())],
             Path(a.results) / "logs" / f"splits_{name}.log")
    return splits


def random_pick(base: Path, seed: int, draw: int, target: Path) -> Path:
    """ADD lines of the unlabeled list drawn at random (a seed per training seed and draw)."""
    lines = base.joinpath("unlabeled.txt").read_text().splitlines()
    picked = np.random.default_rng(1000 * seed + draw).choice(len(lines), ADD, replace=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(f"{lines[i]}\n" for i in picked))
    return target


def round1(name: str, seed: int, strategy: str | None, draw: int | None, a: argparse.Namespace) -> dict:
    """One round-1 run: the 6 images from `allspark suggest --strategy` on the round-0 run at `seed` (its EMA
    teacher), or random `draw`, moved to labeled with `allspark splits --add`, then the recipe trained."""
    base, results = Path(a.data) / "splits", Path(a.results)
    if strategy is not None:
        out = Path(a.out) / "suggest" / f"{strategy}_s{seed}"
        allspark(["suggest", "--checkpoint", str(Path(a.out) / f"round0_s{seed}"), "--which", "latest", "--count",
                  str(ADD), "--strategy", strategy, "--out", str(out), "--threads", "1", "--device", "cpu"],
                 results / "logs" / f"{name}.suggest.log")
        chosen = Path(shutil.copy(out / "suggested.txt", results / f"{name}.txt"))
    else:
        chosen = random_pick(base, seed, draw, results / f"{name}.txt")
    return train(name, split_with(name, base, chosen, a), seed, a)


def round1_jobs(a: argparse.Namespace, done: dict, seeds: list[int]) -> list[tuple]:
    """(name, seed, strategy, draw) of the round-1 runs at `seeds` not yet done: the comparison first (suggest with
    both parts, the random draws) at every seed, then the ablations (one part alone)."""
    jobs = []
    for seed in seeds:
        jobs += [(f"suggest_{s}_s{seed}", seed, s, None) for s in a.strategies if s == "both"]
        jobs += [(f"random{d}_s{seed}", seed, None, d) for d in range(a.draws)]
    for seed in seeds:
        jobs += [(f"suggest_{s}_s{seed}", seed, s, None) for s in a.strategies if s != "both"]
    return [job for job in jobs if job[0] not in done]


def table(rows: list[dict], seeds: list[int], strategies, draws: int, key: str = "miou") -> str:
    """Markdown: a row per arm (round 0, each strategy, each random draw, their mean and spread), a column per seed,
    the mean; `key` miou (the student) or miou_ema (the EMA teacher)."""
    by = {(r["run"].rsplit("_s", 1)[0], r["seed"]): r[key] for r in rows}
    lines = ["| arm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |", "|---" * (len(seeds) + 2) + "|"]

    def line(label: str, values: list[float | None]) -> str:
        shown = [f"{v:.2f}" if v is not None else "" for v in values]
        known = [v for v in values if v is not None]
        return f"| {label} | " + " | ".join(shown) + f" | {statistics.mean(known):.2f} |" if known else ""

    lines.append(line("round 0 (6 labeled)", [by.get(("round0", s)) for s in seeds]))
    for strategy in strategies:
        lines.append(line(f"+6 suggested ({strategy})", [by.get((f"suggest_{strategy}", s)) for s in seeds]))
    randoms = {s: [by[(f"random{d}", s)] for d in range(draws) if (f"random{d}", s) in by] for s in seeds}
    for d in range(draws):
        lines.append(line(f"+6 random, draw {d}", [by.get((f"random{d}", s)) for s in seeds]))
    lines.append(line("+6 random, mean of draws", [statistics.mean(v) if v else None for v in randoms.values()]))
    for strategy in strategies:
        gains = [by[(f"suggest_{strategy}", s)] - statistics.mean(randoms[s])
                 if (f"suggest_{strategy}", s) in by and randoms[s] else None for s in seeds]
        lines.append(line(f"suggested ({strategy}) - random mean", gains))
    lines.append("| random: spread (max - min over draws) | " + " | ".join(
        f"{max(v) - min(v):.2f}" if len(v) > 1 else "" for v in randoms.values()) + " | |")
    return "\n".join(line for line in lines if line) + "\n"


def tables(rows: list[dict], a: argparse.Namespace) -> str:
    return "\n".join(f"{title}\n\n{table(rows, a.seeds, a.strategies, a.draws, key)}" for title, key in
                     (("Final mIoU (%), the student", "miou"), ("Final mIoU (%), the EMA teacher", "miou_ema")))


def main() -> None:
    a = parse_args()
    results = Path(a.results)
    results.mkdir(parents=True, exist_ok=True)
    runs = results / "runs.jsonl"
    rows = [json.loads(line) for line in runs.read_text().splitlines()] if runs.is_file() else []
    done = {row["run"]: row for row in rows}

    def record(row: dict) -> None:
        rows.append(row)
        with open(runs, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        (results / "table.md").write_text(tables(rows, a))

    if a.table_only:
        (results / "table.md").write_text(tables(rows, a))
        print(tables(rows, a))
        return
    base = Path(a.data) / "splits"
    with ThreadPoolExecutor(a.parallel) as pool:  # round-1 runs queue as soon as their seed's round 0 is there
        ready = [s for s in a.seeds if f"round0_s{s}" in done]
        pending = {pool.submit(train, f"round0_s{s}", base, s, a): s for s in a.seeds if s not in ready}
        pending.update({pool.submit(round1, *job, a): None for job in round1_jobs(a, done, ready)})
        while pending:
            future = next(as_completed(pending))
            seed = pending.pop(future)
            record(future.result())
            if seed is not None:
                pending.update({pool.submit(round1, *job, a): None for job in round1_jobs(a, done, [seed])})
    print(tables(rows, a))


if __name__ == "__main__":
    main()
