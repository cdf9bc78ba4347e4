"""CamVid proxy of the paper's Table 5 and of the recipe study: SupBaseline, SemiBaseline, AllSpark, its
ablation rows and the two recipe rows on camvid-mini (11 classes), a fixed seeded 1/8 labeled split, the
same iteration budget for every row, one or more training seeds.

    python -m benchmarks.studies.camvid_proxy --data ../shared/data/camvid-mini --iters 2000
    python -m benchmarks.studies.camvid_proxy --seeds 0 1 2 --methods sup,semi,allspark,semi_recipe,allspark_recipe

Each row is one `allspark train` run (the command users run) in OUT/seed<S>/<row>/; a row whose run already
finished is not run again, so the script resumes. Per seed the table (mIoU, per-class IoU, wall time,
iterations/s) goes to OUT/seed<S>/results.md and .json; with several seeds, OUT/seeds.md holds mIoU per
seed, mean and spread (max - min).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.timing import SHARED

# this script's --amp and --optimizer-kernel for a study's `--precision` (benchmarks.timing.PRECISIONS)
PRECISION = {"exact": {"amp": "off", "optimizer_kernel": "exact"},
             "default": {"amp": "auto", "optimizer_kernel": "fused"}}

# method name in the table -> (preset, extra overrides)
METHODS = {
    "SupBaseline": ("camvid/sup", []),
    "SemiBaseline": ("camvid/semi", []),
    "CCA only": ("camvid/allspark", ["model.ablation=cca"]),
    "CCA + S-Mem (no CSG)": ("camvid/allspark", ["model.ablation=cca_mem"]),
    "AllSpark (CCA + S-Mem + CSG)": ("camvid/allspark", ["model.ablation=full"]),
    "SemiBaseline + recipe": ("camvid/recipe", ["method=semi"]),
    "AllSpark + recipe": ("camvid/recipe", []),
}
SLUGS = {"SupBaseline": "sup", "SemiBaseline": "semi", "CCA only": "cca", "CCA + S-Mem (no CSG)": "cca_mem",
         "AllSpark (CCA + S-Mem + CSG)": "allspark",
         "SemiBaseline + recipe": "semi_recipe", "AllSpark + recipe": "allspark_recipe"}
LABELED_FRACTION = 8  # 1/8 of train.txt: 46 of 367 images


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED / "data" / "camvid-mini"))
    p.add_argument("--out", default="runs/camvid_proxy")
    p.add_argument("--iters", type=int, default=2000, help="iteration budget of every method")
    p.add_argument("--batch-size", type=int, default=4, help="labeled and unlabeled images per step")
    p.add_argument("--lr", type=float, default=None, help="encoder lr (default: the camvid preset)")
    p.add_argument("--warmup-epochs", type=int, default=None, help="S-Mem warm-up (default: the preset)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds (each row runs once per seed)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the labeled split, the same for every run")
    p.add_argument("--crop", type=int, default=None, help="crop size (default: the camvid preset's 161)")
    p.add_argument("--pretrained", default=None, help="encoder weights: HF id/dir or mit_b0.pth (default: none)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--amp", default="off", choices=("auto", "off", "bf16", "fp16"))
    p.add_argument("--optimizer-kernel", default="exact", choices=("exact", "fused"),
                   help="train.optimizer_kernel (exact: as the committed tables)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of each run (allspark train --threads)")
    p.add_argument("--parallel", type=int, default=1, help="methods trained at the same time (GPU: all five)")
    p.add_argument("--methods", default="sup,semi,cca,cca_mem,allspark",
                   help="comma-separated subset of " + ",".join(SLUGS.values()))
    p.add_argument("--extra", nargs="*", default=[], metavar="key=value", help="overrides for every method")
    return p.parse_args()


def make_split(data: Path, out: Path, seed: int) -> tuple[Path, Path]:
    from allspark.data.splits import make_split as split

    train = data / "train.txt"
    count = math.ceil(sum(1 for line in train.read_text().splitlines() if line.strip()) / LABELED_FRACTION)
    split_dir = out / "splits"
    if (split_dir / "labeled.txt").is_file():
        return split_dir / "labeled.txt", split_dir / "unlabeled.txt"
    return split(train, split_dir, count=count, seed=seed)


def command(name: str, seed: int, args: argparse.Namespace, lists: tuple[Path, Path], run_dir: Path) -> list[str]:
    preset, extra = METHODS[name]
    overrides = [
        f"run_dir={run_dir}", f"data.root={Path(args.data).resolve()}",
        f"data.labeled_list={lists[0].resolve()}", f"data.unlabeled_list={lists[1].resolve()}",
        f"data.workers={args.workers}", f"model.pretrained={args.pretrained or 'null'}",
        f"train.max_iters={args.iters}", "train.epochs=100000", "train.eval_every=100000",
        f"train.batch_size={args.batch_size}", f"train.seed={seed}", f"train.amp={args.amp}",
        f"train.checkpoint_every={max(100, args.iters // 10)}", f"train.optimizer_kernel={args.optimizer_kernel}",
    ]
    optional = {"train.lr": args.lr, "train.warmup_epochs": args.warmup_epochs, "model.crop_size": args.crop}
    overrides += [f"{key}={value}" for key, value in optional.items() if value is not None]
    return [sys.executable, "-m", "allspark", "train", preset, *overrides, *extra, *args.extra,
            "--device", args.device, "--threads", str(args.threads), "--no-progress"]


def last_val(run_dir: Path) -> dict:
    from allspark.runs.metrics import read_metrics

    vals = [record for record in read_metrics(run_dir) if record.get("split") == "val"]
    if not vals:
        raise RuntimeError(f"{run_dir}/metrics.jsonl has no validation line: the run did not finish")
    return vals[-1]


def result_path(out: Path, name: str, seed: int) -> Path:
    """Where the finished run of row `name` at `seed` leaves its result (mIoU, IoUs, wall time)."""
    return out / f"seed{seed}" / f"{SLUGS[name]}.json"


def run_all(jobs: list[tuple[str, int]], args: argparse.Namespace, lists, out: Path) -> None:
    """Run the (row, seed) jobs, up to --parallel at a time, each writing its result_path when it finishes."""
    pending, running = list(jobs), {}
    while pending or running:
        while pending and len(running) < args.parallel:
            name, seed = job = pending.pop(0)
            run_dir = out / f"seed{seed}" / SLUGS[name]
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            log = open(run_dir.with_suffix(".log"), "w")
            proc = subprocess.Popen(command(name, seed, args, lists, run_dir), stdout=log, stderr=subprocess.STDOUT)
            running[job] = (proc, time.time(), log, run_dir)
            print(f"started {name}, seed {seed}: log {log.name}", flush=True)
        time.sleep(2)
        for (name, seed), (proc, started, log, run_dir) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[(name, seed)]
            if proc.returncode != 0:
                raise RuntimeError(f"{name}, seed {seed} failed (exit {proc.returncode}); see {log.name}")
            seconds, val = time.time() - started, last_val(run_dir)
            result = {"method": name, "seed": seed, "miou": val["miou"], "iou": val["iou"], "iterations": val["iter"],
                      "seconds": seconds, "its": val["iter"] / seconds}
            result_path(out, name, seed).write_text(json.dumps(result, indent=1) + "\n")
            print(f"finished {name}, seed {seed} in {seconds:.0f} s: mIoU {val['miou'] * 100:.2f}", flush=True)


def table(rows: list[dict], class_names: list[str]) -> str:
    head = "| method | mIoU | " + " | ".join(class_names) + " | wall (s) | it/s |"
    sep = "|" + "---|" * (len(class_names) + 4)
    lines = [head, sep]
    for r in rows:
        ious = " | ".join(f"{v * 100:.1f}" for v in r["iou"])
        lines.append(f"| {r['method']} | {r['miou'] * 100:.2f} | {ious} | {r['seconds']:.0f} | {r['its']:.2f} |")
    return "\n".join(lines)


def seeds_table(results: dict[tuple[str, int], dict], names: list[str], seeds: list[int]) -> str:
    """mIoU % of every row at every seed, with the mean and the spread (max - min)."""
    lines = ["| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | spread |",
             "|---" * (len(seeds) + 3) + "|"]
    for name in names:
        values = [results[name, seed]["miou"] * 100 for seed in seeds]
        cells = " | ".join(f"{v:.2f}" for v in values)
        lines.append(f"| {name} | {cells} | {statistics.fmean(values):.2f} | {max(values) - min(values):.2f} |")
    return "\n".join(lines)


def main() -> None:
    from allspark.data.layouts import get_layout

    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(args.methods.split(","))
    unknown = wanted - set(SLUGS.values())
    if unknown:
        raise SystemExit(f"--methods: unknown {sorted(unknown)}; choose from {','.join(SLUGS.values())}")
    names = [name for name, slug in SLUGS.items() if slug in wanted]
    lists = make_split(Path(args.data), out, args.split_seed)
    jobs = [(name, seed) for seed in args.seeds for name in names if not result_path(out, name, seed).is_file()]
    run_all(jobs, args, lists, out)
    results = {(name, seed): json.loads(result_path(out, name, seed).read_text()) for seed in args.seeds for name in names}
    class_names = list(get_layout("camvid", args.data).class_names)  # the layout of the camvid presets
    for seed in args.seeds:
        text = table([results[name, seed] for name in names], class_names)
        print(f"seed {seed}\n{text}")
        (out / f"seed{seed}" / "results.md").write_text(text + "\n")
        rows = [results[name, seed] for name in names]
        (out / f"seed{seed}" / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    if len(args.seeds) > 1:
        text = seeds_table(results, names, args.seeds)
        print(text)
        (out / "seeds.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
