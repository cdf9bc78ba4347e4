"""Our training and inference steps against the authors' release: same weights, one process, steps interleaved.

The release runs unmodified through the measuring harness in ../shared/reference (its `official` module, which
needs `pip install einops` in the venv; not a dependency of the package). Each round times every case once, in
turn, so a shared machine slows them alike; the table gives medians. Ours is `Trainer.step` (teacher pass,
student pass, losses, SGD) in fp32 and, as extra columns, with `train.amp=bf16`; inference is `model(images)`
without autograd. `--device cuda` runs both on a GPU (benchmarks/gpu_rows.sh).

    .venv/bin/python -m benchmarks.speed.bench_side_by_side --threads 1
    .venv/bin/python -m benchmarks.speed.bench_side_by_side --device cuda --arch b5 --crop 513
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from benchmarks.fidelity.release_harness import import_harness
from benchmarks.timing import REFERENCE, interleave, medians


def our_config(args, method: str, amp: str = "off", compile: bool = False):
    from allspark.config.loading import load_config

    ablation = "full" if method == "allspark" else "none"
    return load_config("demo", [f"method={method}", f"model.ablation={ablation}", f"model.encoder=mit_{args.arch}",
                                f"model.crop_size={args.crop}", f"model.num_classes={args.classes}",
                                "model.grouping=logits", f"train.batch_size={args.batch}", f"train.amp={amp}", f"train.compile={compile}",
                                f"train.lr={args.lr}", f"train.lr_multi={args.lr_multi}", "train.warmup_epochs=0",
                                "run_dir=runs/bench_side_by_side"])


class Release:
    """The release's model, optimizer and loop body for one decoder (allspark or base)."""

    def __init__(self, harness, args, decoder: str):
        self.harness, self.allspark = harness, decoder == "allspark"
        self.model = harness.build_official_model(args.arch, num_classes=args.classes, crop=args.crop, seed=0,
                                                  warmup_epoch=0, decoder=decoder).to(args.device)
        if self.allspark:
            self.model.decoder.set_SMem_status(epoch=0, isVal=False)  # the memory is the labeled keys
        self.optimizer = harness.official_optimizer(self.model, args.lr, args.lr_multi)
        self.criterion = nn.CrossEntropyLoss(ignore_index=255)

    def step(self, batches) -> None:
        batch_l, batch_u = batches
        body = self.harness.allspark_step if self.allspark else self.harness.semi_step
        body(self.model, self.optimizer, batch_l["image"], batch_l["mask"], batch_u["image"], self.criterion,
             self.criterion)


class Ours:
    """Our `Trainer` holding the release's initial weights (memory included), for one method and amp."""

    def __init__(self, args, method: str, release_state: dict, amp: str = "off", compile: bool = False):
        from allspark import load_official
        from allspark.distributed import DistInfo
        from allspark.engine.step import Trainer

        cfg = our_config(args, method, amp, compile)
        self.trainer = Trainer(cfg, DistInfo(device=torch.device(args.device)), total=10**6)
        self.trainer.model.load_state_dict(load_official(release_state, cfg).state_dict())
        self.use_memory = method == "allspark"

    def step(self, batches) -> None:
        self.trainer.step(*batches, self.use_memory)


def inference(model: nn.Module, images: torch.Tensor, amp: str = "off"):
    """A no-argument callable: one forward pass of `model` in eval mode, no autograd."""
    model.eval()

    def run():
        with torch.no_grad(), torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            model(images)
    return run


def random_batches(args, generator: torch.Generator):
    b, s, k = args.batch, args.crop, args.classes
    batch_l = {"image": torch.randn(b, 3, s, s, generator=generator), "mask": torch.randint(0, k, (b, s, s), generator=generator)}
    batch_u = {"image": torch.randn(b, 3, s, s, generator=generator), "valid": torch.ones(b, s, s, dtype=torch.bool)}
    return ({k: v.to(args.device) for k, v in batch_l.items()}, {k: v.to(args.device) for k, v in batch_u.items()})


def training_rows(harness, args, batches) -> dict[str, dict[str, float]]:
    """{row: {'release': s, 'ours': s, 'ours bf16': s}} for the AllSpark (memory on) and SemiBaseline steps."""
    rows = {}
    for row, method, decoder in (("AllSpark training step, memory on", "allspark", "allspark"),
                                 ("SemiBaseline training step", "semi", "base")):
        release = Release(harness, args, decoder)
        state = release.model.state_dict()
        cases = {"release": lambda r=release: r.step(batches)}
        for name, amp in (("ours", "off"), ("ours bf16", "bf16")):
            ours = Ours(args, method, state, amp)
            cases[name] = lambda o=ours: o.step(batches)
        rows[row] = medians(interleave(cases, args.rounds, args.warmup, synchronizer(args.device)))
        print(f"  {row}: done", file=sys.stderr, flush=True)
    return rows


def inference_rows(harness, args, generator: torch.Generator) -> dict[str, dict[str, float]]:
    """Forward passes of the AllSpark model at each batch size, same weights; bf16 for ours as an extra column."""
    from allspark import load_official

    release = Release(harness, args, "allspark").model
    release.decoder.set_SMem_status(epoch=0, isVal=True)
    ours = load_official(release.state_dict(), our_config(args, "allspark")).to(args.device)
    rows = {}
    for batch in (1, 4):
        images = torch.randn(batch, 3, args.crop, args.crop, generator=generator).to(args.device)
        cases = {"release": inference(release, images), "ours": inference(ours, images),
                 "ours bf16": inference(ours, images, "bf16")}
        rows[f"inference, AllSpark, batch {batch}"] = medians(interleave(cases, args.rounds, args.warmup,
                                                                         synchronizer(args.device)))
    return rows


def synchronizer(device: str):
    """What makes a timed call wait for queued GPU work (None on the CPU)."""
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else None


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """Markdown: release ms, then ms and speed-up of each of our variants; the AllSpark / Semi ratio last."""
    ours = [name for name in next(iter(rows.values())) if name != "release"]
    head = "| | release ms | " + " | ".join(f"{name} ms | speed-up" for name in ours) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(ours))]
    for row, times in rows.items():
        cells = " | ".join(f"{times[name] * 1e3:.1f} | {times['release'] / times[name]:.2f}x" for name in ours)
        lines.append(f"| {row} | {times['release'] * 1e3:.1f} | {cells} |")
    step, semi = rows["AllSpark training step, memory on"], rows["SemiBaseline training step"]
    ratios = " | ".join(f"{step[name] / semi[name]:.2f}x | " for name in ours)
    lines.append(f"| AllSpark step / Semi step | {step['release'] / semi['release']:.2f}x | {ratios}|")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=REFERENCE, help="the shared/reference folder")
    parser.add_argument("--arch", default="b0", choices=("b0", "b1", "b2", "b3", "b4", "b5"))
    parser.add_argument("--crop", type=int, default=161, help="not a multiple of 32 (the release's memory size)")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--batch", type=int, default=2, help="labeled and unlabeled images per step, each")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--lr-multi", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    if args.crop % 32 == 0:
        parser.error(f"--crop {args.crop}: the release sizes its memory as (crop // 32 + 1)^2 tokens, which a "
                     "multiple of 32 does not give; use e.g. 161")
    if args.threads:
        torch.set_num_threads(args.threads)
    # the release's InstanceNorm is built with a channel count it does not use; torch warns on every call
    warnings.filterwarnings("ignore", message="input's size at dim=1 does not match num_features")
    harness = import_harness(args.reference, "official", "bench_side_by_side")
    load = os.getloadavg()[0]
    generator = torch.Generator().manual_seed(0)
    rows = training_rows(harness, args, random_batches(args, generator))
    rows.update(inference_rows(harness, args, generator))
    print(f"MiT-{args.arch.upper()}, crop {args.crop}, {args.classes} classes, batch {args.batch}+{args.batch}, "
          f"{args.device}, {torch.get_num_threads()} thread(s), torch {torch.__version__}, medians of {args.rounds} interleaved "
          f"rounds; load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    print(format_table(rows))


if __name__ == "__main__":
    main()
