"""`allspark demo`: synthetic data, a few labeled images, SupBaseline vs AllSpark on CPU in minutes."""
from __future__ import annotations

import math
import time
from pathlib import Path

from allspark.config import load_config
from allspark.data.splits import make_split
from allspark.data.synthetic import generate_synthetic
from allspark.engine.trainer import train

NUM_TRAIN, NUM_VAL, IMAGE_SIZE, NUM_LABELED = 400, 80, 128, 6  # dataset of the demo preset


def prepare_demo_data(data: Path, num_classes: int) -> None:
    """Generate the synthetic set and its labeled/unlabeled split under `data` unless already there."""
    if not (data / "val.txt").is_file():
        print(f"generating the synthetic dataset in {data} ...")
        generate_synthetic(data, num_train=NUM_TRAIN, num_val=NUM_VAL, size=IMAGE_SIZE, seed=0,
                           num_classes=num_classes, progress=True)
    if not (data / "splits" / "unlabeled.txt").is_file():
        make_split(data / "train.txt", data / "splits", count=NUM_LABELED, seed=0)


def demo_overrides(method: str, out: Path, data: Path, iters: int | None) -> list[str]:
    """Overrides of the demo preset for `method`: both methods get the same iteration budget and about
    the same number of evaluations, so the epochs (passes over the unlabeled list, or over the few labeled
    images for SupBaseline) are scaled to match."""
    base = load_config("demo")
    unlabeled_epoch = (NUM_TRAIN - NUM_LABELED) // base.train.batch_size
    total = iters or base.train.epochs * unlabeled_epoch
    per_epoch = NUM_LABELED // base.train.batch_size if method == "sup" else unlabeled_epoch
    epochs = math.ceil(total / per_epoch)
    evals = base.train.epochs // base.train.eval_every
    return [f"method={method}", f"run_dir={out / method}", f"data.root={data}", f"train.max_iters={total}",
            f"train.epochs={epochs}", f"train.eval_every={max(1, epochs // evals)}"]


def run_demo(out: Path = Path("runs/demo"), data: Path = Path("demo_data"),
             iters: int | None = None) -> dict[str, dict]:
    """Train SupBaseline and AllSpark on the demo set, print the mIoU table; returns {method: result}."""
    prepare_demo_data(data, load_config("demo").model.num_classes)
    results = {}
    for method in ("sup", "allspark"):
        cfg = load_config("demo", demo_overrides(method, out, data, iters))
        print(f"\n== {method}: {cfg.run_dir}")
        started = time.time()
        result = train(cfg, device="cpu")
        results[method] = {**result, "seconds": time.time() - started, "run_dir": cfg.run_dir}
    print("\n" + format_demo_table(results))
    return results


def format_demo_table(results: dict[str, dict]) -> str:
    names = {"sup": "SupBaseline", "semi": "SemiBaseline", "allspark": "AllSpark"}
    lines = [f"{'method':<13} {'mIoU (%)':>9} {'best (%)':>9} {'iters':>6} {'time (s)':>9}  run directory"]
    for method, r in results.items():
        lines.append(f"{names[method]:<13} {r['miou'] * 100:9.2f} {r['best_miou'] * 100:9.2f} {r['iteration']:6d} "
                     f"{r['seconds']:9.1f}  {r['run_dir']}")
    return "\n".join(lines)
