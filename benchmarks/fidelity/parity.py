"""Parity with the authors' release: the same training on the demo data, both sides, several seeds.

    python -m benchmarks.fidelity.parity --data /path/to/demo_data [--sides release ours] [--seeds 0 1 2]

Settings of both sides: MiT-B0 from scratch, crop 97 (the release needs crop % 32 != 0), batch 4 labeled
+ 4 unlabeled, lr 0.002 (x10 for the head), 686 iterations on a poly schedule, S-Mem from epoch 2, one
thread; methods sup / semi / allspark. The release runs through the CPU harness of
`../shared/reference/harness` (`train_official.py`, the release's own code), ours through `allspark
train demo` with overrides. Each run writes its summary to OUT/<side>_<method>_s<seed>.json (its log, and the
release's JSON with every iteration, go to --runs); a run whose summary exists is skipped, so the script
resumes and can be re-run to print the table (final mIoU %, each seed, mean, spread = max - min). The demo
data is `allspark demo`'s (generated under --data when missing).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.timing import EXACT_OVERRIDES, REFERENCE, RESULTS, ROOT, seconds

METHODS = ("sup", "semi", "allspark")
SIDES = ("release", "ours")
NAMES = {"sup": "Sup", "semi": "Semi", "allspark": "AllSpark"}
# the table's settings; both sides get them
CROP, BATCH, LR, LR_MULTI, WARMUP_EPOCHS, NUM_CLASSES = 97, 4, 0.002, 10, 2, 4


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="demo_data", help="demo data folder (generated when missing)")
    p.add_argument("--out", default=str(RESULTS / "parity"), help="one summary JSON per run")
    p.add_argument("--runs", default=str(ROOT / "runs/parity"), help="run directories, logs, the release's JSONs")
    p.add_argument("--harness", default=str(REFERENCE / "harness"),
                   help="the release's CPU harness (train_official.py)")
    p.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--iters", type=int, default=686, help="iterations of every run (7 passes over 394 images)")
    p.add_argument("--extra", nargs="*", default=[], metavar="key=value",
                   help="more overrides for our side, e.g. model.grouping=logits (give them their own --out)")
    p.add_argument("--table-only", action="store_true", help="print the table of the JSONs already in --out")
    return p.parse_args()


def release_command(args: argparse.Namespace, method: str, seed: int, out_json: Path) -> list[str]:
    """The harness's command line, run from the folder holding the data (relative list paths)."""
    name = Path(args.data).name
    return [sys.executable, str(Path(args.harness) / "train_official.py"), "--method", method,
            "--iters", str(args.iters), "--data-root", name, "--labeled", f"{name}/splits/labeled.txt",
            "--unlabeled", f"{name}/splits/unlabeled.txt", "--eval-list", f"{name}/val.txt",
            "--num-classes", str(NUM_CLASSES), "--crop", str(CROP), "--batch-size", str(BATCH),
            "--lr", str(LR), "--lr-multi", str(LR_MULTI), "--warmup-epoch", str(WARMUP_EPOCHS),
            "--threads", "1", "--seed", str(seed), "--out", str(out_json.resolve())]


def _list_length(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def ours_overrides(args: argparse.Namespace, method: str, seed: int, run_dir: Path) -> list[str]:
    """Overrides of the demo preset giving the release's settings; an epoch is a pass over the unlabeled
    list (the labeled one for sup), as the release counts them."""
    data = Path(args.data).resolve()
    listed = "labeled" if method == "sup" else "unlabeled"
    epochs = math.ceil(args.iters / (_list_length(data / "splits" / f"{listed}.txt") // BATCH))
    overrides = [f"run_dir={run_dir}", f"data.root={data}", f"method={method}", f"model.crop_size={CROP}",
                 f"train.seed={seed}", f"train.max_iters={args.iters}", f"train.epochs={epochs}",
                 f"train.eval_every={epochs}", f"train.batch_size={BATCH}", f"train.lr={LR}",
                 f"train.lr_multi={LR_MULTI}", f"train.warmup_epochs={WARMUP_EPOCHS}",
                 f"train.checkpoint_every={args.iters}", "data.workers=0", *EXACT_OVERRIDES]  # ablation: the method's
    return overrides + list(args.extra)


def run_ours(args: argparse.Namespace, method: str, seed: int, out_json: Path) -> None:
    from allspark.runs.metrics import read_metrics

    run_dir = Path(args.runs) / f"{method}_s{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run, so the wall time is the whole training's
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    overrides = ours_overrides(args, method, seed, run_dir)
    command = [sys.executable, "-m", "allspark", "train", "demo", *overrides, "--device", "cpu", "--no-progress",
               "--threads", "1"]
    took = seconds(lambda: _run(command, run_dir.with_suffix(".log"), cwd=ROOT))
    val = [r for r in read_metrics(run_dir) if r.get("split") == "val"][-1]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    result = {"side": "ours", "method": method, "seed": seed, "iters": val["iter"], "miou": round(val["miou"] * 100, 4),
              "iou_class": [round(v * 100, 4) for v in val["iou"]], "wall_s": round(took, 1),
              "commit": commit.stdout.strip(), "overrides": overrides}
    out_json.write_text(json.dumps(result, indent=1) + "\n")


def run_release(args: argparse.Namespace, method: str, seed: int, out_json: Path) -> None:
    """The harness's run, its JSON under --runs; OUT gets that JSON without the per-iteration log."""
    full = Path(args.runs) / f"release_{method}_s{seed}.json"
    full.parent.mkdir(parents=True, exist_ok=True)
    _run(release_command(args, method, seed, full), full.with_suffix(".log"), cwd=Path(args.data).resolve().parent)
    result = json.loads(full.read_text())
    del result["log"]
    out_json.write_text(json.dumps(result, indent=1) + "\n")


def _run(command: list[str], log_path: Path, cwd: Path) -> None:
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                              env={**_env(), "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"parity: run failed (exit {proc.returncode}); see {log_path}")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def table(out: Path, sides, methods, seeds) -> str:
    """Markdown: one row per side and method, final mIoU % per seed, mean and spread (max - min)."""
    head = "| final mIoU % | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | spread |"
    lines = [head, "|---" * (len(seeds) + 3) + "|"]
    for method in methods:
        for side in sides:
            values = []
            for seed in seeds:
                path = out / f"{side}_{method}_s{seed}.json"
                values.append(json.loads(path.read_text())["miou"] if path.is_file() else None)
            done = [v for v in values if v is not None]
            cells = [f"{v:.2f}" if v is not None else "-" for v in values]
            mean = f"{statistics.fmean(done):.2f}" if done else "-"
            spread = f"{max(done) - min(done):.2f}" if len(done) > 1 else "-"
            lines.append(f"| {NAMES[method]} {side} | " + " | ".join(cells) + f" | {mean} | {spread} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        todo = [(side, m, s) for s in args.seeds for m in args.methods for side in args.sides
                if not (out / f"{side}_{m}_s{s}.json").is_file()]
        if any(side == "release" for side, _, _ in todo) and not (Path(args.harness) / "train_official.py").is_file():
            raise SystemExit(f"parity: the release harness is not at {args.harness} (train_official.py); "
                             f"pass --harness, or --sides ours")
        if todo:
            from allspark.demo import prepare_demo_data

            prepare_demo_data(Path(args.data), NUM_CLASSES)
        for side, method, seed in todo:
            out_json = out / f"{side}_{method}_s{seed}.json"
            print(f"{side} {method} seed {seed} -> {out_json}", flush=True)
            runner = run_release if side == "release" else run_ours
            took = seconds(lambda: runner(args, method, seed, out_json))
            print(f"  mIoU {json.loads(out_json.read_text())['miou']:.2f} in {took:.0f} s", flush=True)
    print(table(out, args.sides, args.methods, args.seeds))


if __name__ == "__main__":
    main()
