"""A competent encoder for the recipe study: SupBaseline trained with labels on the synthetic source set
(SOURCE_SHAPES: other shapes, hues and textures than the demo's classes), never on the demo's images; the
same step `allspark demo` takes before its rows (`allspark.demo.pretrain_source_encoder`).

    python -m benchmarks.studies.pretrain_source [--out runs/source_pretrain] [--iters 1500]
    allspark train demo model.pretrained=<the printed path> ...   # a demo row starting from that encoder

Generates OUT/source_data (3000 train / 200 val images at 128 px, seeded) when missing and trains in
OUT/source_encoder with the demo preset's settings (MiT-B0 from scratch, batch 4, lr 0.002 x10 for the
head) at the crop of benchmarks/fidelity/parity.py's table (97), one thread; an interrupted run resumes, a finished
one is not run again. Writes the final val mIoU % and per-class IoU to OUT/result.json and copies it with the
run's config.yaml to --results (never the logs or checkpoints). Prints the weights file
last: `model.pretrained=` takes it and loads its encoder only (checked here on a 4-class demo model).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

from benchmarks.fidelity.parity import CROP
from benchmarks.timing import RESULTS, ROOT


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/source_pretrain", help="data, run directory and result.json")
    p.add_argument("--results", default=None, help="where result.json and the run's config.yaml are copied "
                   "(default: benchmarks/results/source_pretrain/i<iters>)")
    p.add_argument("--iters", type=int, default=1500)
    return p.parse_args()


def main() -> None:
    import torch

    from allspark.config.loading import load_config
    from allspark.demo import pretrain_source_encoder
    from allspark.models import build_model
    from allspark.runs.metrics import read_metrics

    args = parse_args()
    torch.set_num_threads(1)
    out = Path(args.out).resolve()
    results = Path(args.results or RESULTS / "source_pretrain" / f"i{args.iters}")
    # checkpoint_every as the recorded runs (results/source_pretrain/i*/config.yaml) had it: no effect on the result
    weights = pretrain_source_encoder(out, args.iters, extra=(f"model.crop_size={CROP}", "train.checkpoint_every=100"),
                                      progress=False)
    run_dir = weights.parents[1]
    val = [r for r in read_metrics(run_dir) if r.get("split") == "val"][-1]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    result = {"classes": "source", "iters": val["iter"], "miou": round(val["miou"] * 100, 2),
              "iou_class": [round(v * 100, 2) for v in val["iou"]], "commit": commit.stdout.strip(),
              "weights": str(weights)}
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    results.mkdir(parents=True, exist_ok=True)
    for path in (out / "result.json", run_dir / "config.yaml"):
        shutil.copy(path, results / path.name)
    model = build_model(load_config("demo", [f"model.pretrained={weights}"]).model)
    print(f"the encoder loads into the {model.head.classifier.out_channels}-class demo model")
    print(f"source val mIoU {result['miou']:.2f} % after {result['iters']} iterations (per class {result['iou_class']})")
    print(weights)


if __name__ == "__main__":
    main()
