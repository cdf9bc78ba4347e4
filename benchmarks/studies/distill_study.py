"""Distillation's mechanics on CamVid (issue 29.5, the distillation row): a fixed teacher encoder distilled into a
random MiT-B0 on camvid-mini's training images (labels unused), then the frozen-encoder probe (the head alone, a
fixed budget) of the random encoder, the teacher and the student, on the same labeled list and val.

    OMP_NUM_THREADS=1 python -m benchmarks.studies.distill_study --data ../shared/data/camvid-mini \\
        --teacher runs/pretrain_study/mim_sup/seed0/sup --labeled runs/pretrain_study/random/splits/labeled.txt \\
        --out runs/distill_study --iters 1000 --probe-iters 300

The teacher here is a run folder (its best checkpoint's encoder: a SupBaseline trained on CamVid's 46 labeled
images); foundation weights cannot be fetched offline, so this measures how far the student's probe score moves
towards its teacher's, not what DINOv2 would give. Finished runs are not run again.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from allspark.pretrain.probe import Probe, probe_overrides
from allspark.runs.metrics import read_metrics
from benchmarks.timing import EXACT_OVERRIDES, SHARED

# fp32 and the default optimiser kernel (benchmarks.timing.EXACT): the committed figures' setting
SETTINGS = ["model.crop_size=97", "train.batch_size=4", "train.lr=0.005", "data.workers=0", "train.seed=0",
            *EXACT_OVERRIDES]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED / "data" / "camvid-mini"))
    p.add_argument("--teacher", required=True, help="anything model.pretrained loads for MiT-B0")
    p.add_argument("--labeled", required=True, help="the probe's labeled list")
    p.add_argument("--out", default="runs/distill_study")
    p.add_argument("--iters", type=int, default=1000)
    p.add_argument("--probe-iters", type=int, default=300)
    return p.parse_args()


def allspark(*argv: str, log: Path) -> float:
    """Run `allspark ARGV` (one thread, CPU), its output to `log`; returns its CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "w") as handle:
        subprocess.run([sys.executable, "-m", "allspark", *argv, "--device", "cpu", "--threads", "1", "--no-progress"],
                       stdout=handle, stderr=subprocess.STDOUT, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def probe_miou(args: argparse.Namespace, out: Path, name: str, encoder: str | None) -> float:
    """The frozen-encoder probe of `encoder` (None: random weights), as `allspark pretrain --probe-list` runs it."""
    run_dir = out / f"probe_{name}"
    probe = Probe(str(Path(args.labeled).resolve()), "val.txt", args.probe_iters)
    overrides = probe_overrides(probe, Path(encoder or "none"), run_dir, str(Path(args.data).resolve()), 4)
    overrides += SETTINGS + (["model.pretrained=null"] if encoder is None else [])
    allspark("train", "camvid/sup", *overrides, log=out / f"probe_{name}.log")
    return [r for r in read_metrics(run_dir) if r.get("split") == "val"][-1]["miou"] * 100


def main() -> None:
    args = parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data).resolve()
    started = time.time()
    cpu = allspark("pretrain", "camvid/sup", "model.pretrained=null", f"data.root={data}", f"run_dir={out / 'student'}",
                   "data.workers=0", "train.log_every=100", *EXACT_OVERRIDES, "--images", str(data / "train.txt"),
                   "--teacher", str(Path(args.teacher).resolve()), "--iters", str(args.iters), "--batch-size", "8",
                   "--crop", "96", log=out / "student.log")
    wall = time.time() - started
    teacher = str(Path(args.teacher).resolve())
    scores = {name: probe_miou(args, out, name, encoder) for name, encoder in
              (("random", None), ("teacher", teacher), ("student", str(out / "student")))}
    share = (scores["student"] - scores["random"]) / (scores["teacher"] - scores["random"])
    text = ("| encoder | probe mIoU |\n|---|---|\n" + "".join(f"| {k} | {v:.2f} |\n" for k, v in scores.items())
            + f"\nthe student's probe covers {share * 100:.0f} % of the way from random to the teacher; distillation "
              f"{args.iters} iterations: {cpu / 3600:.3f} CPU-hours ({wall:.0f} s wall)")
    print(text)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "probe_miou": scores, "cpu_seconds": cpu,
                                                  "wall_seconds": wall}, indent=1) + "\n")


if __name__ == "__main__":
    main()
