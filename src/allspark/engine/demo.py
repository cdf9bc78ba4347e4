"""`allspark demo`: synthetic data, a few labeled images; SupBaseline, AllSpark with the paper's loop and
AllSpark with the recommended recipe, on CPU in minutes."""
from __future__ import annotations

import math
import time
from pathlib import Path

from allspark.config import load_config
from allspark.data.splits import make_split
from allspark.data.synthetic import generate_synthetic
from allspark.engine.trainer import train

NUM_TRAIN, NUM_VAL, IMAGE_SIZE, NUM_LABELED = 400, 80, 128, 6  # dataset of the demo preset
# the demo's rows: run name -> (preset, label); every row gets the same iteration budget
DEMO_RUNS = {"sup": ("demo", "SupBaseline"), "allspark": ("demo", "AllSpark, paper's loop"),
             "allspark_recipe": ("demo_recipe", "AllSpark + recipe")}


def prepare_demo_data(data: Path, num_classes: int) -> None:
    """Generate the synthetic set and its labeled/unlabeled split under `data` unless already there."""
    if not (data / "val.txt").is_file():
        print(f"generating the synthetic dataset in {data} ...")
        generate_synthetic(data, num_train=NUM_TRAIN, num_val=NUM_VAL, size=IMAGE_SIZE, seed=0,
                           num_classes=num_classes, progress=True)
    if not (data / "splits" / "unlabeled.txt").is_file():
        make_split(data / "train.txt", data / "splits", count=NUM_LABELED, seed=0)


def demo_overrides(run: str, out: Path, data: Path, iters: int | None) -> list[str]:
    """Overrides of the demo preset for the `run` of DEMO_RUNS: every run gets the same iteration budget and
    about the same number of evaluations, so the epochs (passes over the unlabeled list, or over the few
    labeled images for SupBaseline) are scaled to match."""
    base = load_config("demo")
    unlabeled_epoch = (NUM_TRAIN - NUM_LABELED) // base.train.batch_size
    total = iters or base.train.epochs * unlabeled_epoch
    per_epoch = NUM_LABELED // base.train.batch_size if run == "sup" else unlabeled_epoch
    epochs = math.ceil(total / per_epoch)
    evals = base.train.epochs // base.train.eval_every
    overrides = [f"run_dir={out / run}", f"data.root={data}", f"train.max_iters={total}",
                 f"train.epochs={epochs}", f"train.eval_every={max(1, epochs // evals)}"]
    return overrides + (["method=sup"] if run == "sup" else [])  # model.ablation follows the method


def run_demo(out: Path = Path("runs/demo"), data: Path = Path("demo_data"),
             iters: int | None = None) -> dict[str, dict]:
    """Train the runs of DEMO_RUNS on the demo set, print the mIoU table; returns {run: result}."""
    prepare_demo_data(data, load_config("demo").model.num_classes)
    results = {}
    for run, (preset, label) in DEMO_RUNS.items():
        cfg = load_config(preset, demo_overrides(run, out, data, iters))
        print(f"\n== {label}: {cfg.run_dir}")
        started = time.time()
        result = train(cfg, device="cpu")
        results[run] = {**result, "seconds": time.time() - started, "run_dir": cfg.run_dir}
    print("\n" + format_demo_table(results))
    return results


def format_demo_table(results: dict[str, dict]) -> str:
    """The mIoU table of the demo's runs, and one line saying what it shows."""
    lines = [f"{'run':<23} {'mIoU (%)':>9} {'best (%)':>9} {'iters':>6} {'time (s)':>9}  run directory"]
    for run, r in results.items():
        lines.append(f"{DEMO_RUNS[run][1]:<23} {r['miou'] * 100:9.2f} {r['best_miou'] * 100:9.2f} "
                     f"{r['iteration']:6d} {r['seconds']:9.1f}  {r['run_dir']}")
    lines.append("Same budget per row, 6 labeled images, MiT-B0 from scratch: whether unlabeled images pay here "
                 "changes with the seed (three seeds per row in BENCHMARKS.md, 'Recipe study').")
    return "\n".join(lines)
