"""`allspark eval [CONFIG] [key=value ...] --checkpoint RUN`: mIoU and per-class IoU of a checkpoint, eval.json."""
from __future__ import annotations

import argparse

from allspark.commands.options import (add_checkpoint_options, add_config_command, add_device_option,
                                       add_threads_option, set_threads)
from allspark.config import AMP_MODES, EVAL_MODES, load_config
from allspark.engine.evaluate import run_evaluation


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides) if args.config else None
    set_threads(args)
    run_evaluation(cfg, args.checkpoint, args.mode, args.out, args.device, overrides=args.overrides, amp=args.amp,
                   which=args.which)
    return 0


def register(sub) -> None:
    options = argparse.ArgumentParser(add_help=False)
    add_device_option(options)
    add_checkpoint_options(options, what="weights file or run directory; required. Without CONFIG the config saved "
                                         "in the weights is used", required=False)
    options.add_argument("--mode", choices=EVAL_MODES, default=None, help="default: eval.mode")
    add_threads_option(options)
    options.add_argument("--out", default=None, help="where eval.json goes (default: the checkpoint's run directory)")
    options.add_argument("--amp", choices=AMP_MODES, default="off",
                         help="mixed precision of the forward passes (bf16: faster on CPUs with AVX-512 BF16)")
    add_config_command(sub, "eval", options, run, config_optional=True, required=("--checkpoint",))
