"""Training-step throughput and peak memory for sup / semi / allspark (memory off and on).

One `Trainer.step` (teacher pass, student pass, losses, SGD) on fixed random batches of B + B crops,
so data loading is left out. CPU peak memory is the process's max RSS measured in a fresh child
process per setting; CUDA peak memory is torch.cuda.max_memory_allocated.

    .venv/bin/python -m benchmarks.speed.bench_train                      # MiT-B0, crop 161, 2 + 2, CPU
    .venv/bin/python -m benchmarks.speed.bench_train --device cuda --encoder mit_b5 --crop 513 --amp bf16
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch

from benchmarks.timing import ROOT, seconds

SETTINGS = {  # name: (method, ablation, use_memory, recipe)
    "sup": ("sup", "none", False, None),
    "semi": ("semi", "none", False, None),
    "allspark (memory off)": ("allspark", "full", False, None),
    "allspark (memory on)": ("allspark", "full", True, None),
    "unimatch_v2 loop": ("semi", "none", False, "unimatch_v2"),  # with a DINOv2 encoder (DPT head)
}
DEFAULT_SETTINGS = list(SETTINGS)[:4]


def build(name: str, args: argparse.Namespace):
    """(trainer, labeled batch, unlabeled batch or None, use_memory) of one setting on fixed random batches."""
    from allspark.config.loading import load_config
    from allspark.distributed import DistInfo
    from allspark.engine.step import Trainer

    method, ablation, use_memory, recipe = SETTINGS[name]
    cfg = load_config("demo", [f"method={method}", *([f"recipe={recipe}"] if recipe else []),
                               f"model.ablation={ablation}", f"model.encoder={args.encoder}",
                               f"model.crop_size={args.crop}", f"model.num_classes={args.classes}",
                               f"train.batch_size={args.batch}", f"train.amp={args.amp}",
                               f"train.compile={args.compile}", "run_dir=runs/bench"])
    torch.manual_seed(0)
    trainer = Trainer(cfg, DistInfo(device=torch.device(args.device)), total=10**6)
    b, s, k = args.batch, args.crop, args.classes
    batch_l = {"image": torch.randn(b, 3, s, s), "mask": torch.randint(0, k, (b, s, s))}
    batch_u = {"image": torch.randn(b, 3, s, s), "valid": torch.ones(b, s, s, dtype=torch.bool)}
    if recipe:  # two strong views, each with a CutMix box (a quarter of the crop), as the loaders give them
        box = torch.zeros(b, s, s, dtype=torch.bool)
        box[:, : s // 2, : s // 2] = True
        batch_u.update(strong=torch.randn(b, 3, s, s), strong2=torch.randn(b, 3, s, s), box=box, box2=box.flip(-1))
    return trainer, batch_l, None if method == "sup" else batch_u, use_memory


def measure(name: str, args: argparse.Namespace) -> dict:
    """Seconds per step and peak memory of one setting, in this process."""
    device = torch.device(args.device)
    trainer, batch_l, batch_u, use_memory = build(name, args)

    sync = torch.cuda.synchronize if device.type == "cuda" else None

    def steps(count: int) -> None:
        for _ in range(count):
            trainer.step(batch_l, batch_u, use_memory)

    first = seconds(lambda: steps(1), sync)  # with --compile: the compilation (or the inductor cache's load)
    seconds(lambda: steps(args.warmup - 1), sync)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    per_step = seconds(lambda: steps(args.iters), sync) / args.iters  # the mean over --iters steps
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    return {"name": name, "it_s": 1 / per_step, "s_per_it": per_step, "peak_mib": peak, "first_step_s": first}


def make_parser(description: str) -> argparse.ArgumentParser:
    """The step settings of the benchmark."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--encoder", default="mit_b0")
    parser.add_argument("--crop", type=int, default=161)
    parser.add_argument("--batch", type=int, default=2, help="per branch: B labeled + B unlabeled")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"))
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, choices=list(SETTINGS),
                        help="which steps, each in its own process (default: the first four)")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # child mode: one setting, JSON out
    return parser


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only:
        print(json.dumps(measure(args.only, args)))
        return
    print(f"device {args.device}, {args.encoder}, crop {args.crop}, batch {args.batch}+{args.batch}, "
          f"amp {args.amp}, compile {args.compile}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    rows = []
    for name in args.settings:
        child = [sys.executable, "-m", __spec__.name, *sys.argv[1:], "--only", name]
        done = subprocess.run(child, capture_output=True, text=True, check=True, cwd=ROOT)
        out = done.stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(f"{name:24s} {rows[-1]['it_s']:7.2f} it/s  {rows[-1]['s_per_it'] * 1000:8.1f} ms/it  "
              f"peak {rows[-1]['peak_mib']:8.0f} MiB  first step {rows[-1]['first_step_s']:.1f} s", flush=True)
    by_name = {r["name"]: r for r in rows}
    if not {"allspark (memory on)", "semi"} <= set(by_name):
        return
    ratio = by_name["allspark (memory on)"]["s_per_it"] / by_name["semi"]["s_per_it"]
    print(f"allspark (memory on) / semi step time: {ratio:.2f}x (target <= 1.25x)")


if __name__ == "__main__":
    main()
