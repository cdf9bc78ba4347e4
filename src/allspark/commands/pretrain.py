"""`allspark pretrain CONFIG [key=value ...] --images FOLDER_OR_LIST`: an encoder from the user's own images, by
masked image modelling or distillation from `--teacher`; `--probe-list` scores it with a frozen-encoder probe."""
from __future__ import annotations

import argparse
import os

from allspark.commands.options import (add_config_command, add_device_option, add_threads_option, positive_int,
                                       set_threads)
from allspark.commands.train import relaunch_with_torchrun
from allspark.config.loading import load_config
from allspark.errors import UsageError
from allspark.pretrain.loop import pretrain
from allspark.pretrain.masking import MASK_BLOCK, MASK_RATIO
from allspark.pretrain.options import LR, WARMUP, WEIGHT_DECAY, PretrainOptions
from allspark.pretrain.probe import Probe, run_probe
from allspark.runs.folder import RunFolder


def options_of(args: argparse.Namespace) -> PretrainOptions:
    return PretrainOptions(images=args.images, iters=args.iters, batch_size=args.batch_size, crop=args.crop,
                           lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup, mask_ratio=args.mask_ratio,
                           mask_block=args.mask_block, teacher=args.teacher, teacher_encoder=args.teacher_encoder)


def run(args: argparse.Namespace) -> int:
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return relaunch_with_torchrun(args.nproc, args.argv)
    if (args.probe_list is None) != (args.probe_val is None):
        raise UsageError("--probe-list and --probe-val go together (a labeled list to train the probe's head on, "
                         "a labeled list to score it on)")
    overrides = [*args.overrides, *([f"model.pretrained={args.init}"] if args.init else [])]
    cfg = load_config(args.config, overrides)
    set_threads(args)
    result = pretrain(cfg, options_of(args), args.force_config, args.device, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(f"encoder weights: {result['encoder']} (model.pretrained={cfg.run_dir} loads them)")
    if args.probe_list:
        probe = Probe(args.probe_list, args.probe_val, args.probe_iters, args.probe_root)
        miou = run_probe(probe, args.config, args.overrides, result["encoder"], RunFolder(cfg.run_dir).root / "probe",
                         args.device, progress=not args.no_progress)
        print(f"probe (frozen encoder, head trained {args.probe_iters} iterations on {args.probe_list}): "
              f"mIoU {miou * 100:.2f} % on {args.probe_val}")
    return 0


def register(sub) -> None:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--images", help="a folder of images (searched below too) or a list file")
    options.add_argument("--teacher", help="distil this encoder's last feature map (anything model.pretrained loads) "
                                           "instead of masked image modelling")
    options.add_argument("--teacher-encoder", help="the teacher's model.encoder name (default: the student's)")
    options.add_argument("--init", help="start from these encoder weights (as model.pretrained) instead of random")
    options.add_argument("--iters", type=positive_int, default=1000, help="optimiser steps (default 1000)")
    options.add_argument("--batch-size", type=positive_int, default=8, help="images per step per process")
    options.add_argument("--crop", type=positive_int, default=224, help="crop side, down to whole mask blocks")
    options.add_argument("--lr", type=float, default=LR, help=f"AdamW's peak learning rate (default {LR})")
    options.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY, help=f"default {WEIGHT_DECAY}")
    options.add_argument("--warmup", type=float, default=WARMUP, help="share of the steps of linear warm-up")
    options.add_argument("--mask-ratio", type=float, default=MASK_RATIO, help=f"share of mask blocks hidden (default {MASK_RATIO}, SimMIM's)")
    options.add_argument("--mask-block", type=positive_int, default=MASK_BLOCK, help=f"mask block side in pixels (default {MASK_BLOCK})")
    options.add_argument("--probe-list", help="a labeled list: score the encoder by a frozen-encoder probe on it")
    options.add_argument("--probe-val", help="the labeled list the probe is scored on")
    options.add_argument("--probe-root", help="folder the probe lists are relative to (default: data.root)")
    options.add_argument("--probe-iters", type=positive_int, default=200, help="the probe head's steps")
    options.add_argument("--force-config", action="store_true", help="continue a run whose config.yaml differs")
    options.add_argument("--nproc", type=int, default=1, help="processes on this machine (relaunches under torchrun)")
    options.add_argument("--no-progress", action="store_true", help="no progress bar (or lines, off a terminal)")
    add_device_option(options)
    add_threads_option(options)
    parser = add_config_command(sub, "pretrain", options, run, required=("--images",),
                                description="Pretrain an encoder (model.encoder) on the images of --images in "
                                            "run_dir; an existing run directory continues from its latest checkpoint.")
    parser.set_defaults(interrupted="the run keeps its latest checkpoint; the same command continues")
