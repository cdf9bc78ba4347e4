"""A competent encoder for the demo study: SupBaseline trained with labels on the synthetic source set
(SOURCE_SHAPES: other shapes, hues and textures than the demo's classes), never on the demo's images.

    python benchmarks/pretrain_source.py [--out runs/source_pretrain] [--iters 1500]
    allspark train demo model.pretrained=<the printed path> ...   # a demo row starting from that encoder

Generates OUT/data (3000 train / 200 val images at 128 px, seeded) when missing, then trains `allspark train
demo method=sup` on all its training images with the settings of benchmarks/parity.py's table (MiT-B0 from
scratch, crop 97, batch 4, lr 0.002 x10 for the head, one thread) in OUT/run. An interrupted run resumes from
its `latest` checkpoint; a finished one (OUT/result.json) is not run again. OUT/result.json holds the final val
mIoU % and per-class IoU; it and the run's config.yaml, metrics.jsonl and train.log are copied to --results.
Prints the final weights file last: `model.pretrained=` takes it and loads its encoder only (checked here on
a 4-class demo model).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from parity import BATCH, CROP, LR, LR_MULTI, ROOT  # also puts this checkout's src first on sys.path


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/source_pretrain", help="data, run directory and result.json")
    p.add_argument("--results", default=str(ROOT / "benchmarks/results/source_pretrain"),
                   help="where the run's small files are copied (never the checkpoints)")
    p.add_argument("--iters", type=int, default=1500)
    p.add_argument("--num-train", type=int, default=3000)
    p.add_argument("--num-val", type=int, default=200)
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated source set")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    return p.parse_args()


def prepare_source_data(data: Path, args: argparse.Namespace, num_classes: int) -> None:
    """Generate the source set under `data` unless a complete one (val.txt is written last) is there."""
    from allspark.data.synthetic import generate_synthetic

    if not (data / "val.txt").is_file():
        print(f"generating the source set in {data} ...", flush=True)
        generate_synthetic(data, num_train=args.num_train, num_val=args.num_val, size=args.size,
                           seed=args.data_seed, num_classes=num_classes, progress=True, classes="source")


def overrides(args: argparse.Namespace, data: Path, run_dir: Path, num_classes: int) -> list[str]:
    """The demo preset turned into SupBaseline on every source training image; one epoch is a pass over them."""
    epochs = math.ceil(args.iters / (args.num_train // BATCH))
    return [f"run_dir={run_dir}", f"data.root={data}", "data.labeled_list=train.txt", "data.unlabeled_list=",
            "data.workers=0", "method=sup", f"model.num_classes={num_classes}", f"model.crop_size={CROP}",
            f"train.seed={args.seed}", f"train.max_iters={args.iters}", f"train.epochs={epochs}",
            "train.eval_every=1", f"train.batch_size={BATCH}", f"train.lr={LR}", f"train.lr_multi={LR_MULTI}"]


def train(args: argparse.Namespace, data: Path, run_dir: Path, num_classes: int) -> dict:
    """Run (or resume) `allspark train` in `run_dir`; returns the result of its last evaluation."""
    from allspark.engine.runs import read_metrics

    command = [sys.executable, "-m", "allspark", "train", "demo", *overrides(args, data, run_dir, num_classes),
               "--device", "cpu", "--no-progress", "--threads", "1"]
    print("$ " + " ".join(command), flush=True)
    started = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    if subprocess.run(command, cwd=ROOT, env=env).returncode != 0:
        raise SystemExit(f"pretrain_source: training failed; see {run_dir / 'train.log'}")
    val = [r for r in read_metrics(run_dir) if r.get("split") == "val"][-1]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {"classes": "source", "iters": val["iter"], "miou": round(val["miou"] * 100, 2),
            "iou_class": [round(v * 100, 2) for v in val["iou"]], "wall_s_this_call": round(time.time() - started),
            "commit": commit.stdout.strip(), "command": command[1:]}


def check_loads_into_demo(weights: Path) -> None:
    """Build the 4-class demo model from `weights` as model.pretrained: its encoder must load key for key."""
    from allspark.config import load_config
    from allspark.models import build_model

    model = build_model(load_config("demo", [f"model.pretrained={weights}"]).model)
    print(f"encoder loads into the {model.head.classifier.out_channels}-class demo model", flush=True)


def main() -> None:
    from allspark.data.synthetic import SOURCE_SHAPES

    args = parse_args()
    out, results = Path(args.out).resolve(), Path(args.results)
    data, run_dir, result_json = out / "data", out / "run", out / "result.json"
    weights = run_dir / "checkpoints" / "latest.safetensors"
    num_classes = len(SOURCE_SHAPES) + 1
    if not result_json.is_file():
        prepare_source_data(data, args, num_classes)
        result = {**train(args, data, run_dir, num_classes), "weights": str(weights)}
        result_json.write_text(json.dumps(result, indent=1) + "\n")
    result = json.loads(result_json.read_text())
    results.mkdir(parents=True, exist_ok=True)
    for path in (result_json, run_dir / "config.yaml", run_dir / "metrics.jsonl", run_dir / "train.log"):
        shutil.copy(path, results / path.name)
    check_loads_into_demo(weights)
    print(f"source val mIoU {result['miou']:.2f} % after {result['iters']} iterations "
          f"(per class {result['iou_class']})")
    print(weights)


if __name__ == "__main__":
    main()
