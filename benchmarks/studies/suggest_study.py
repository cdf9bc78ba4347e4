"""Does labelling what `allspark suggest` picks buy more mIoU than labelling at random? The study of issue 22.

--dataset demo: AllSpark + the recommended recipe (`demo_recipe`) on the demo's 6 labeled images, from the
source-pretrained encoder, `--iters` iterations. --dataset camvid: a row of studies/camvid_proxy.py (`--row sup` =
SupBaseline, `semi_recipe` = SemiBaseline + recipe, `recipe` = AllSpark + recipe) on its seed-0 1/8 split of
camvid-mini (46 labeled), its settings (crop 97, batch 4, lr 0.005), from `--encoder` or random weights.
Round 0 trains on the labeled list at training seed S. Round 1: `--add` more images (demo 6, camvid 23), chosen by
`allspark suggest` on the round-0 run (its EMA teacher where it has one, `--which latest`) with each strategy, by a
score variant of benchmarks/studies/suggest_variants.py (`--variants`), or at random (draws 0..D-1), added with
`allspark splits --add`, and the same row trained again from the same start with the same budget and seed.

    OMP_NUM_THREADS=1 python -m benchmarks.studies.suggest_study --data DEMO_DATA --encoder ENCODER.safetensors \\
        --out runs/suggest_study --results benchmarks/results/suggest --iters 300 --seeds 0 1 2 --draws 3 --parallel 2
    OMP_NUM_THREADS=1 python -m benchmarks.studies.suggest_study --dataset camvid --data ../shared/data/camvid-mini \\
        --row sup --encoder ENCODER.safetensors --out runs/suggest_camvid/sup \\
        --results benchmarks/results/suggest/camvid/sup --iters 1000 --strategies both

Every run is an `allspark` command in a subprocess (--threads 1, --device cpu), its output kept in
OUT/logs/; one JSON line per finished run goes to RESULTS/runs.jsonl (final student and EMA mIoU), and
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

from benchmarks.studies import camvid_proxy
from benchmarks.studies.suggest_variants import VARIANTS, pick
from benchmarks.timing import RESULTS, add_precision_option, precision_overrides

ADD = {"demo": 6, "camvid": 23}  # images added in round 1: the demo's labeled count, half of CamVid's 46
ROWS = {"sup": "SupBaseline", "semi_recipe": "SemiBaseline + recipe", "recipe": "AllSpark + recipe"}  # camvid_proxy's
STRATEGIES = ("both", "uncertainty", "diversity")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=tuple(ADD), default="demo")
    p.add_argument("--data", required=True, help="demo: the demo data (its splits/labeled.txt has the 6 labeled "
                   "images); camvid: camvid-mini")
    p.add_argument("--encoder", help="the source-pretrained encoder weights (demo: required; camvid: default random)")
    p.add_argument("--row", choices=tuple(ROWS), default="sup", help="camvid: which camvid_proxy row is trained")
    p.add_argument("--out", default="runs/suggest_study")
    p.add_argument("--results", default=str(RESULTS / "suggest"), help="runs.jsonl, table.md, picks")
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--add", type=int, default=None, help="images added in round 1 (default: demo 6, camvid 23)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--draws", type=int, default=3, help="random draws per seed")
    p.add_argument("--strategies", nargs="*", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--variants", nargs="*", default=[], choices=VARIANTS[1:],
                   help="score variants of benchmarks/studies/suggest_variants.py, each with `--strategy both`")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time (each on one thread)")
    p.add_argument("--table-only", action="store_true", help="rewrite RESULTS/table.md from RESULTS/runs.jsonl")
    add_precision_option(p)
    a = p.parse_args()
    if a.dataset == "demo" and not a.encoder:
        p.error("--dataset demo needs --encoder")
    a.add = a.add or ADD[a.dataset]
    return a


def allspark(args: list[str], log: Path) -> None:
    """Run `python -m allspark ARGS` with its output in `log`; a failure stops the study with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        code = subprocess.call([sys.executable, "-m", "allspark", *args], stdout=handle, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"allspark {args[0]} failed ({code}); see {log}:\n{log.read_text()[-2000:]}")


def train_args(run_dir: Path, splits: Path, seed: int, a: argparse.Namespace) -> list[str]:
    """The `allspark train` arguments of one run on `splits`: the same row, start and budget for every run
    (`iters` iterations, evaluated once at the end)."""
    lists = (splits.resolve() / "labeled.txt", splits.resolve() / "unlabeled.txt")
    if a.dataset == "camvid":  # camvid_proxy's own command, so the rows match its table
        proxy = argparse.Namespace(data=a.data, workers=0, pretrained=a.encoder and str(Path(a.encoder).resolve()),
                                   iters=a.iters, batch_size=4, lr=0.005, warmup_epochs=None, crop=97, extra=[],
                                   device="cpu", threads=1, **camvid_proxy.PRECISION[a.precision])
        return camvid_proxy.command(ROWS[a.row], seed, proxy, lists, run_dir)[3:]  # less `python -m allspark`
    unlabeled = len(lists[1].read_text().splitlines())
    epochs = math.ceil(a.iters / (unlabeled // 4))
    return ["train", "demo_recipe", f"run_dir={run_dir}", f"data.root={Path(a.data).resolve()}",
            f"data.labeled_list={lists[0]}", f"data.unlabeled_list={lists[1]}",
            f"model.pretrained={Path(a.encoder).resolve()}", f"train.seed={seed}", f"train.max_iters={a.iters}",
            f"train.epochs={epochs}", f"train.eval_every={epochs}", f"train.checkpoint_every={a.iters}",
            *precision_overrides(a.precision), "--threads", "1", "--device", "cpu", "--no-progress"]


def train(name: str, splits: Path, seed: int, a: argparse.Namespace) -> dict:
    """One run on `splits` (labeled.txt, unlabeled.txt); its final student and EMA mIoU (%)."""
    run_dir = Path(a.out) / name
    allspark(train_args(run_dir, splits, seed, a), Path(a.out) / "logs" / f"{name}.log")
    val = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"val"' in line][-1]
    return {"run": name, "seed": seed, "iters": a.iters, "miou": round(val["miou"] * 100, 2),
            "miou_ema": round(val.get("miou_ema", float("nan")) * 100, 2)}


def base_splits(a: argparse.Namespace) -> Path:
    """The round-0 lists: the demo's own, or camvid_proxy's seed-0 1/8 split (made once under OUT/splits/)."""
    if a.dataset == "camvid":
        return camvid_proxy.make_split(Path(a.data), Path(a.out), 0)[0].parent
    return Path(a.data) / "splits"


def split_with(name: str, base: Path, chosen: Path, a: argparse.Namespace) -> Path:
    """A copy of the round-0 lists with the images of `chosen` moved to labeled (`allspark splits --add`)."""
    splits = Path(a.out) / "splits" / name
    splits.mkdir(parents=True, exist_ok=True)
    for list_name in ("labeled.txt", "unlabeled.txt"):
        shutil.copy(base / list_name, splits / list_name)
    allspark(["splits", "--add", str(chosen), "--out", str(splits), "--root", str(Path(a.data).resolve())],
             Path(a.out) / "logs" / f"splits_{name}.log")
    return splits


def random_pick(base: Path, seed: int, draw: int, count: int, target: Path) -> Path:
    """`count` lines of the unlabeled list drawn at random (a seed per training seed and draw)."""
    lines = base.joinpath("unlabeled.txt").read_text().splitlines()
    picked = np.random.default_rng(1000 * seed + draw).choice(len(lines), count, replace=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(f"{lines[i]}\n" for i in picked))
    return target


def round1(name: str, seed: int, arm: str, a: argparse.Namespace) -> dict:
    """One round-1 run: the `add` images from `allspark suggest --strategy S` (arm `suggest_S`) or score variant V
    (arm `variant_V`) on the round-0 run at `seed`, or random draw D (arm `randomD`), moved to labeled with
    `allspark splits --add`, then the row trained."""
    base, results = base_splits(a), Path(a.results)
    round0 = Path(a.out) / f"round0_s{seed}"
    target = results / f"{name}.txt"
    kind, _, what = arm.partition("_")
    if kind == "suggest":
        out = Path(a.out) / "suggest" / f"{what}_s{seed}"
        allspark(["suggest", "--checkpoint", str(round0), "--which", "latest", "--count", str(a.add), "--strategy",
                  what, "--out", str(out), "--threads", "1", "--device", "cpu",
                  "--amp", "off" if a.precision == "exact" else "auto"],
                 Path(a.out) / "logs" / f"{name}.suggest.log")
        chosen = Path(shutil.copy(out / "suggested.txt", target))
    elif kind == "variant":
        target.write_text("".join(f"{line}\n" for line in pick(round0, a.add, [what])[what]))
        chosen = target
    else:
        chosen = random_pick(base, seed, int(arm.removeprefix("random")), a.add, target)
    return train(name, split_with(name, base, chosen, a), seed, a)


def arms(a: argparse.Namespace) -> list[str]:
    """The round-1 arms in the order they run: suggest with both parts, the random draws, the ablations (one part
    alone), the score variants."""
    return ([f"suggest_{s}" for s in a.strategies if s == "both"] + [f"random{d}" for d in range(a.draws)]
            + [f"suggest_{s}" for s in a.strategies if s != "both"] + [f"variant_{v}" for v in a.variants])


def round1_jobs(a: argparse.Namespace, done: dict, seeds: list[int]) -> list[tuple]:
    """(name, seed, arm) of the round-1 runs at `seeds` not yet done: the comparison first (suggest with both parts,
    the random draws) at every seed, then the other arms."""
    comparison = [arm for arm in arms(a) if arm == "suggest_both" or arm.startswith("random")]
    jobs = [(f"{arm}_s{seed}", seed, arm) for seed in seeds for arm in comparison]
    jobs += [(f"{arm}_s{seed}", seed, arm) for seed in seeds for arm in arms(a) if arm not in comparison]
    return [job for job in jobs if job[0] not in done]


def table(rows: list[dict], a: argparse.Namespace, key: str = "miou") -> str:
    """Markdown: a row per arm (round 0, each suggested arm, each random draw, their mean and spread), a column per
    seed, the mean; `key` miou (the student) or miou_ema (the EMA teacher)."""
    seeds, n = a.seeds, a.add
    by = {(r["run"].rsplit("_s", 1)[0], r["seed"]): r[key] for r in rows}
    lines = ["| arm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |", "|---" * (len(seeds) + 2) + "|"]

    def line(label: str, values: list[float | None]) -> str:
        known = [v for v in values if v is not None and not math.isnan(v)]
        shown = [f"{v:.2f}" if v is not None and not math.isnan(v) else "" for v in values]
        return f"| {label} | " + " | ".join(shown) + f" | {statistics.mean(known):.2f} |" if known else ""

    chosen = [arm for arm in arms(a) if not arm.startswith("random")]
    label = {arm: f"suggested ({arm.split('_', 1)[1]})" if arm.startswith("suggest") else
             f"variant {arm.split('_', 1)[1]} (both)" for arm in chosen}
    labeled = len(base_splits(a).joinpath("labeled.txt").read_text().splitlines())
    lines.append(line(f"round 0 ({labeled} labeled)", [by.get(("round0", s)) for s in seeds]))
    for arm in chosen:
        lines.append(line(f"+{n} {label[arm]}", [by.get((arm, s)) for s in seeds]))
    randoms = {s: [by[(f"random{d}", s)] for d in range(a.draws) if (f"random{d}", s) in by] for s in seeds}
    for d in range(a.draws):
        lines.append(line(f"+{n} random, draw {d}", [by.get((f"random{d}", s)) for s in seeds]))
    lines.append(line(f"+{n} random, mean of draws", [statistics.mean(v) if v else None for v in randoms.values()]))
    for arm in chosen:
        gains = [by[(arm, s)] - statistics.mean(randoms[s]) if (arm, s) in by and randoms[s] else None for s in seeds]
        lines.append(line(f"{label[arm]} - random mean", gains))
    lines.append("| random: spread (max - min over draws) | " + " | ".join(
        f"{max(v) - min(v):.2f}" if len(v) > 1 else "" for v in randoms.values()) + " | |")
    return "\n".join(line for line in lines if line) + "\n"


def tables(rows: list[dict], a: argparse.Namespace) -> str:
    keys = (("Final mIoU (%), the student", "miou"), ("Final mIoU (%), the EMA teacher", "miou_ema"))
    if not any(not math.isnan(r["miou_ema"]) for r in rows):  # SupBaseline has no teacher
        keys = keys[:1]
    return "\n".join(f"{title}\n\n{table(rows, a, key)}" for title, key in keys)


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
    base = base_splits(a)
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
