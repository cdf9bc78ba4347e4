"""What `allspark pretrain` buys on CamVid (issue 29.5, the part this CPU affords): MiT-B0 from four starts (random
weights; the demo's synthetic-source encoder; masked image modelling on camvid-mini's training images, labels
unused, from random or from the source encoder), each then trained on the camvid_proxy 1/8 split at the same budget
as SupBaseline (and, with --methods sup,semi_recipe, as SemiBaseline + recipe), several seeds, scored on val.

    OMP_NUM_THREADS=1 python -m benchmarks.studies.pretrain_study --data ../shared/data/camvid-mini \\
        --out runs/pretrain_study --pretrain-iters 2000 --iters 1000 --seeds 0 1 2

The source encoder is `allspark.demo`'s (SupBaseline on the synthetic source set, OUT/source); each MIM pretraining
is one `allspark pretrain` run (OUT/mim; OUT/source_mim with `--init` the source encoder), its CPU time measured;
each row is one `camvid_proxy` run (OUT/<start>) with that script's settings. Finished runs are not run again, so
the script resumes. OUT/results.md and .json hold the per-seed rows, their mean and spread and the pretrainings' cost.
`--encoder dinov2_small --crop 98 --lr 0.001` gives the random and MIM rows of another family (whole patches: crop a
multiple of 14); the source starts are MiT-B0's alone.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.studies import camvid_proxy
from benchmarks.timing import EXACT_OVERRIDES, SHARED, add_precision_option, precision_overrides

# start (its OUT folder) -> (table label, the pretraining it needs: None, "source", or a MIM run's name)
STARTS = {"random": ("{} from random weights", None),
          "mim_sup": ("{} after MIM on CamVid train (labels unused)", "mim"),
          "source": ("{}, the synthetic-source encoder", "source"),
          "source_mim": ("{}, the source encoder after MIM on CamVid train", "source_mim")}
NAMES = {"mit_b0": "MiT-B0", "dinov2_small": "DINOv2-small"}
METHODS = {"sup": "SupBaseline", "semi_recipe": "SemiBaseline + recipe"}  # camvid_proxy's slugs


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED / "data" / "camvid-mini"))
    p.add_argument("--out", default="runs/pretrain_study")
    p.add_argument("--pretrain-iters", type=int, default=2000)
    p.add_argument("--pretrain-batch", type=int, default=8)
    p.add_argument("--pretrain-crop", type=int, default=96)
    p.add_argument("--iters", type=int, default=1000, help="training budget of every row")
    p.add_argument("--encoder", choices=NAMES, default="mit_b0", help="the family of every row")
    p.add_argument("--crop", type=int, default=97, help="training crop of every row")
    p.add_argument("--lr", type=float, default=0.005, help="training lr of every row (DINOv2-small from random "
                   "weights diverges at 0.005, in fp32 as in bf16: 0.001)")
    p.add_argument("--starts", nargs="+", choices=STARTS, default=list(STARTS), help="encoder starts to compare")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=["sup"], help="how each start is then trained")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    add_precision_option(p)  # the MIM runs and rows; the source encoder is the committed (exact) one
    args = p.parse_args()
    if args.encoder != "mit_b0" and {"source", "source_mim"} & set(args.starts):
        p.error(f"--starts source and source_mim are MiT-B0's (the demo's source encoder), not {args.encoder}'s")
    return args


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def source_encoder(out: Path) -> Path:
    """The demo's synthetic-source encoder (trained in OUT/source, or found there finished): its weights file."""
    from allspark.demo import pretrain_source_encoder

    return pretrain_source_encoder(out / "source", extra=EXACT_OVERRIDES, progress=False).resolve()


def pretrain(args: argparse.Namespace, out: Path, name: str, init: Path | None = None) -> dict:
    """The MIM run OUT/`name` from `init` or random (resumed, or skipped when done); its cost, in OUT/NAME_cost.json."""
    cost_file = out / f"{name}_cost.json"
    if cost_file.is_file():
        return json.loads(cost_file.read_text())
    data = Path(args.data).resolve()
    command = [sys.executable, "-m", "allspark", "pretrain", "camvid/sup", "model.pretrained=null", f"data.root={data}",
               f"model.encoder={args.encoder}", f"model.crop_size={args.crop}",
               f"run_dir={out / name}", "data.workers=0", "train.log_every=100", *precision_overrides(args.precision),
               "--images", str(data / "train.txt"),
               "--iters", str(args.pretrain_iters), "--batch-size", str(args.pretrain_batch), "--crop",
               str(args.pretrain_crop), "--device", "cpu", "--threads", "1", "--no-progress"]
    command += ["--init", str(init)] if init else []
    cpu, wall = children_cpu_seconds(), time.time()
    with open(out / f"{name}.log", "w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
    cost = {"command": " ".join(command[2:]), "cpu_seconds": children_cpu_seconds() - cpu,
            "wall_seconds": time.time() - wall}
    cost_file.write_text(json.dumps(cost, indent=1) + "\n")
    return cost


def encoder(args: argparse.Namespace, out: Path, start: str, costs: dict[str, dict]) -> Path | None:
    """The weights `start` begins from (None: random), pretraining them first if needed; MIM costs go in `costs`."""
    need = STARTS[start][1]
    if need == "source":
        return source_encoder(out)
    if need:
        costs[need] = pretrain(args, out, need, source_encoder(out) if need == "source_mim" else None)
        return (out / need).resolve()
    return None


def train_rows(args: argparse.Namespace, out: Path, start: str, method: str, weights: Path | None) -> dict[int, float]:
    """camvid_proxy's `method` rows from `weights` (None: random) in OUT/`start`: {seed: mIoU %}."""
    precision = camvid_proxy.PRECISION[args.precision]
    command = [sys.executable, "-m", "benchmarks.studies.camvid_proxy", "--data", args.data, "--out", str(out / start),
               "--iters", str(args.iters), "--batch-size", "4", "--lr", str(args.lr), "--crop", str(args.crop),
               "--device", "cpu", "--workers", "0", "--amp", precision["amp"],
               "--optimizer-kernel", precision["optimizer_kernel"],
               "--methods", method, "--seeds", *map(str, args.seeds)]
    command += ["--pretrained", str(weights)] if weights else []
    command += ["--extra", f"model.encoder={args.encoder}"] if args.encoder != "mit_b0" else []
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return {seed: json.loads((out / start / f"seed{seed}" / f"{method}.json").read_text())["miou"] * 100
            for seed in args.seeds}


def table(method: str, rows: dict[str, dict[int, float]], seeds: list[int], encoder: str) -> str:
    lines = [f"| {METHODS[method]} from | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | spread |",
             "|---" * (len(seeds) + 3) + "|"]
    for start, values in rows.items():
        cells = " | ".join(f"{values[s]:.2f}" for s in seeds)
        numbers = list(values.values())
        lines.append(f"| {STARTS[start][0].format(NAMES[encoder])} | {cells} | {statistics.fmean(numbers):.2f} | "
                     f"{max(numbers) - min(numbers):.2f} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    costs: dict[str, dict] = {}
    weights = {start: encoder(args, out, start, costs) for start in args.starts}
    rows = {method: {start: train_rows(args, out, start, method, weights[start]) for start in args.starts}
            for method in args.methods}
    text = "\n\n".join(table(method, rows[method], args.seeds, args.encoder) for method in args.methods)
    for name, cost in costs.items():
        text += (f"\n\nMIM pretraining ({name}): {args.pretrain_iters} iterations, batch {args.pretrain_batch}, crop "
                 f"{args.pretrain_crop}: {cost['cpu_seconds'] / 3600:.2f} CPU-hours ({cost['wall_seconds']:.0f} s "
                 "wall, one thread)")
    print(text)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows, "pretrain": costs}, indent=1))


if __name__ == "__main__":
    main()
