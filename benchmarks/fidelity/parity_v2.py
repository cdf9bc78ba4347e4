"""Parity of quality with the UniMatch V2 release on the demo data, both sides from the same DINOv2-small encoder.

The encoder: DINOv2-small + DPT trained with labels on the synthetic source set (other shapes, hues and
textures than the demo's; `allspark.demo.pretrain_source_encoder`, the step `allspark demo` takes for MiT), then
written in DINOv2's own layout for the release. Each row trains from it on the demo set (6 labeled images, the
rest unlabeled) with the same budget: ours through `allspark train` (`recipe=unimatch_v2`, `method` sup or semi),
the release through the harness (../shared/reference/harness/unimatch_v2.py: its `supervised.py` / `unimatch_v2.py`
loop bodies and its own data pipeline). The final mIoU (over all classes, 'original' evaluation; the EMA teacher
for unimatch_v2, as the release reports) per seed, mean and sample standard deviation, and whether our mean sits
within the release's spread of its mean. Two runs at a time, one thread each.

    .venv/bin/python -m benchmarks.fidelity.parity_v2            # seeds 0 1 2, 300 iterations at crop 56
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from benchmarks.fidelity.release_harness import import_harness
from benchmarks.timing import EXACT_OVERRIDES, REFERENCE, RESULTS, ROOT, precision_overrides

METHODS = {"sup": "sup", "unimatch_v2": "semi"}  # the release's name -> our method (both with recipe=unimatch_v2)


def release_layout(weights: Path, size: str, v2) -> dict:
    """Our encoder's weights in DINOv2's own names, for the release's `load_backbone`: our conversion rules run on
    the release's own key list tell where each of its tensors went (split ones in order), so the inverse is exact."""
    from allspark.encoders.dinov2 import DINOv2Encoder
    from allspark.models.convert import rename_keys
    from allspark.runs.weights_file import read_weights
    state, _ = read_weights(weights)
    ours = {k.removeprefix("encoder.backbone."): v for k, v in state.items() if k.startswith("encoder.backbone.")}
    template = v2.build_model(size, 2).backbone.state_dict()
    parts = defaultdict(dict)
    for key, origin in rename_keys(template, DINOv2Encoder.original_keys).origin.items():
        name, _, part = origin.partition(" (part ")
        parts[name][int(part.split(" of ")[0]) - 1 if part else 0] = ours[key]
    out = {name: torch.cat([p[i] for i in sorted(p)]) for name, p in parts.items()}
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: tuple(v.shape) for k, v in template.items()}
    return out


def our_command(args, method: str, seed: int, data: Path, encoder: Path, run_dir: Path) -> list[str]:
    """`allspark train` of our `method` (sup, semi or allspark) under recipe=unimatch_v2 from `encoder`."""
    epochs = args.iters  # an upper bound: train.max_iters ends the run
    return [sys.executable, "-m", "allspark", "train", "demo", "--threads", "1", "--no-progress",
            f"method={method}", "recipe=unimatch_v2", "model.encoder=dinov2_small",
            f"model.crop_size={args.crop}", f"model.pretrained={encoder}", f"data.root={data}",
            "train.batch_size=4", f"train.max_iters={args.iters}", f"train.epochs={epochs}",
            f"train.eval_every={epochs}", f"train.checkpoint_every={args.iters}", f"train.seed={seed}",
            "eval.miou_over=all", f"run_dir={run_dir}", *precision_overrides(getattr(args, "precision", "exact"))]


def release_command(args, method: str, seed: int, data: Path, backbone: Path, out: Path) -> list[str]:
    command = [sys.executable, str(Path(args.reference) / "harness" / "unimatch_v2.py"), "--method", method,
               "--data-root", str(data), "--labeled", str(data / "splits" / "labeled.txt"),
               "--eval-list", str(data / "val.txt"), "--num-classes", "4", "--size", "small",
               "--backbone-weights", str(backbone), "--crop", str(args.crop), "--batch-size", "4",
               "--iters", str(args.iters), "--threads", "1", "--seed", str(seed), "--out", str(out)]
    return command + (["--unlabeled", str(data / "splits" / "unlabeled.txt")] if method != "sup" else [])


def our_result(run_dir: Path, method: str) -> float:
    """The final validation mIoU (%) of a run: the EMA teacher's under unimatch_v2, the model's for sup."""
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if '"split": "val"' in line][-1]
    return 100 * (last["miou_ema"] if method != "sup" else last["miou"])


def finished(run_dir: Path) -> bool:
    """Whether an `allspark train` run has its final evaluation (the only one: eval_every is the whole budget); a
    killed one is run again by the same command, which continues its folder."""
    metrics = run_dir / "metrics.jsonl"
    return metrics.is_file() and '"split": "val"' in metrics.read_text()


def our_labeled_loss(run_dir: Path, last: int = 50) -> float:
    """The mean labeled loss of the logged steps among a run's last `last` iterations."""
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if '"split": "train"' in line]
    return statistics.mean(r["loss_l"] for r in steps if r["iter"] > steps[-1]["iter"] - last)


def release_labeled_loss(result: dict, last: int = 50) -> float:
    """The mean labeled loss of the release's last `last` iterations (`loss_x` of unimatch_v2.py, `loss` of sup)."""
    return statistics.mean(step.get("loss_x", step["loss"]) for step in result["losses"][-last:])


def run(command: list[str], log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    with open(log, "w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"parity_v2: {' '.join(command[:4])} ... failed ({done.returncode}); see {log}")


def summary(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", default=REFERENCE, help="the shared/reference folder")
    p.add_argument("--out", type=Path, default=Path("runs/parity_v2"), help="data, encoder, runs and their logs")
    p.add_argument("--results", type=Path, default=RESULTS / "parity_v2", help="the summary, committed")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--iters", type=int, default=300, help="iterations of every row")
    p.add_argument("--crop", type=int, default=56, help="a multiple of 14")
    p.add_argument("--source-iters", type=int, default=1500)
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    args = p.parse_args()
    torch.set_num_threads(1)
    v2 = import_harness(args.reference, "unimatch_v2", "parity_v2")
    v2.load_release()
    from allspark.demo import prepare_demo_data, pretrain_source_encoder
    out = args.out.resolve()
    data = out / "demo_data"
    prepare_demo_data(data, 4)
    encoder = pretrain_source_encoder(out, args.source_iters, ("model.encoder=dinov2_small",
                                                               f"model.crop_size={args.crop}", *EXACT_OVERRIDES),
                                      progress=False)
    backbone = out / "source_dinov2_small_release_layout.pth"
    torch.save(release_layout(encoder, "small", v2), backbone)
    args.results.mkdir(parents=True, exist_ok=True)
    jobs = []
    for seed in args.seeds:
        for method in METHODS:
            run_dir = out / f"ours_{method}_s{seed}"
            if not finished(run_dir):
                jobs.append((our_command(args, METHODS[method], seed, data, encoder, run_dir),
                             out / f"ours_{method}_s{seed}.log"))
            result = out / f"release_{method}_s{seed}.json"
            if not result.is_file():
                jobs.append((release_command(args, method, seed, data, backbone, result),
                             out / f"release_{method}_s{seed}.log"))
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda job: run(*job), jobs))
    rows, losses = {}, {}
    for method in METHODS:
        ours, theirs, our_loss, their_loss = [], [], [], []
        for seed in args.seeds:
            run_dir = out / f"ours_{method}_s{seed}"
            ours.append(our_result(run_dir, method))
            our_loss.append(our_labeled_loss(run_dir))
            result = json.loads((out / f"release_{method}_s{seed}.json").read_text())
            theirs.append(result["miou"])
            their_loss.append(release_labeled_loss(result))
        rows[method] = {"ours": ours, "release": theirs}
        losses[method] = {"ours": our_loss, "release": their_loss}
    (args.results / "summary.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                            "rows": rows, "labeled_loss_last_50": losses}, indent=1))
    print(f"DINOv2-small + DPT from the source encoder ({args.source_iters} iterations), demo data, crop {args.crop}, "
          f"batch 4 (+4), {args.iters} iterations, seeds {args.seeds}; final mIoU % over all classes")
    print("| row | side | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean ± sd | ours within the release's sd |")
    print("|---|---|" + "---|" * len(args.seeds) + "---|---|")
    for method, sides in rows.items():
        for side, values in sides.items():
            within = ""
            if side == "ours":
                mean, ref = statistics.mean(values), sides["release"]
                within = "yes" if abs(mean - statistics.mean(ref)) <= statistics.stdev(ref) else "no"
            print(f"| {method} | {side} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {summary(values)} | {within} |")
    print("\nlabeled loss, mean over the last 50 iterations")
    print("| row | side | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean ± sd |")
    print("|---|---|" + "---|" * len(args.seeds) + "---|")
    for method, sides in losses.items():
        for side, values in sides.items():
            print(f"| {method} | {side} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {summary(values)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
