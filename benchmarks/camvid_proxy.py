"""CamVid proxy of the paper's Table 5: SupBaseline, SemiBaseline, AllSpark and its ablation rows on
camvid-mini (11 classes), a seeded 1/8 labeled split, the same iteration budget and seed for every method.

    python benchmarks/camvid_proxy.py --data ../shared/data/camvid-mini --iters 2000

Each method is one `allspark train` run (the command users run); the table (mIoU, per-class IoU, wall
time, iterations/s) is printed and written to OUT/results.md and OUT/results.json.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

# method name in the table -> (preset, extra overrides)
METHODS = {
    "SupBaseline": ("camvid/sup", []),
    "SemiBaseline": ("camvid/semi", []),
    "CCA only": ("camvid/allspark", ["model.ablation=cca"]),
    "CCA + S-Mem (no CSG)": ("camvid/allspark", ["model.ablation=cca_mem"]),
    "AllSpark (CCA + S-Mem + CSG)": ("camvid/allspark", ["model.ablation=full"]),
}
SLUGS = {"SupBaseline": "sup", "SemiBaseline": "semi", "CCA only": "cca", "CCA + S-Mem (no CSG)": "cca_mem",
         "AllSpark (CCA + S-Mem + CSG)": "allspark"}
LABELED_FRACTION = 8  # 1/8 of train.txt: 46 of 367 images


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/camvid-mini"))
    p.add_argument("--out", default="runs/camvid_proxy")
    p.add_argument("--iters", type=int, default=2000, help="iteration budget of every method")
    p.add_argument("--batch-size", type=int, default=4, help="labeled and unlabeled images per step")
    p.add_argument("--lr", type=float, default=None, help="encoder lr (default: the camvid preset)")
    p.add_argument("--warmup-epochs", type=int, default=None, help="S-Mem warm-up (default: the preset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrained", default=None, help="encoder weights: HF id/dir or mit_b0.pth (default: none)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--parallel", type=int, default=1, help="methods trained at the same time (GPU: all five)")
    p.add_argument("--methods", default=",".join(SLUGS.values()), help="comma-separated subset of " + ",".join(SLUGS.values()))
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


def command(name: str, args: argparse.Namespace, lists: tuple[Path, Path], out: Path) -> list[str]:
    preset, extra = METHODS[name]
    overrides = [
        f"run_dir={out / SLUGS[name]}", f"data.root={Path(args.data).resolve()}",
        f"data.labeled_list={lists[0].resolve()}", f"data.unlabeled_list={lists[1].resolve()}",
        f"data.workers={args.workers}", f"model.pretrained={args.pretrained or 'null'}",
        f"train.max_iters={args.iters}", "train.epochs=100000", "train.eval_every=100000",
        f"train.batch_size={args.batch_size}", f"train.seed={args.seed}", f"train.amp={args.amp}",
        f"train.checkpoint_every={max(100, args.iters // 10)}",
    ]
    if args.lr is not None:
        overrides.append(f"train.lr={args.lr}")
    if args.warmup_epochs is not None:
        overrides.append(f"train.warmup_epochs={args.warmup_epochs}")
    return [sys.executable, "-m", "allspark", "train", preset, *overrides, *extra, *args.extra,
            "--device", args.device, "--no-progress"]


def last_val(run_dir: Path) -> dict:
    from allspark.engine.runs import read_metrics

    vals = [record for record in read_metrics(run_dir) if record.get("split") == "val"]
    if not vals:
        raise RuntimeError(f"{run_dir}/metrics.jsonl has no validation line: the run did not finish")
    return vals[-1]


def run_all(names: list[str], args: argparse.Namespace, lists, out: Path) -> dict[str, float]:
    """Start up to --parallel runs at a time; returns each method's wall time in seconds."""
    pending, running, seconds = list(names), {}, {}
    while pending or running:
        while pending and len(running) < args.parallel:
            name = pending.pop(0)
            log = open(out / f"{SLUGS[name]}.log", "w")
            running[name] = (subprocess.Popen(command(name, args, lists, out), stdout=log, stderr=subprocess.STDOUT),
                             time.time(), log)
            print(f"started {name}: log {out / SLUGS[name]}.log", flush=True)
        time.sleep(2)
        for name, (proc, started, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                del running[name]
                if proc.returncode != 0:
                    raise RuntimeError(f"{name} failed (exit {proc.returncode}); see {out / SLUGS[name]}.log")
                seconds[name] = time.time() - started
                print(f"finished {name} in {seconds[name]:.0f} s", flush=True)
    return seconds


def table(rows: list[dict], class_names: list[str]) -> str:
    head = "| method | mIoU | " + " | ".join(class_names) + " | wall (s) | it/s |"
    sep = "|" + "---|" * (len(class_names) + 4)
    lines = [head, sep]
    for r in rows:
        ious = " | ".join(f"{v * 100:.1f}" for v in r["iou"])
        lines.append(f"| {r['method']} | {r['miou'] * 100:.2f} | {ious} | {r['seconds']:.0f} | {r['its']:.2f} |")
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
    lists = make_split(Path(args.data), out, args.seed)
    seconds = run_all(names, args, lists, out)
    class_names = list(get_layout("camvid", args.data).class_names)  # the layout of the camvid presets
    rows = []
    for name in names:
        val = last_val(out / SLUGS[name])
        rows.append({"method": name, "miou": val["miou"], "iou": val["iou"], "iterations": val["iter"],
                     "seconds": seconds[name], "its": val["iter"] / seconds[name]})
    text = table(rows, class_names)
    print(text)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
