"""`allspark eval [CONFIG] [key=value ...] --checkpoint RUN`: mIoU and per-class IoU of a checkpoint, eval.json."""
from __future__ import annotations

import argparse
import sys

from allspark.commands.options import (add_amp_option, add_checkpoint_options, add_config_command, add_device_option,
                                       add_threads_option, set_threads)
from allspark.config.loading import load_config
from allspark.config.schema import EVAL_MODES
from allspark.engine.evaluate import run_evaluation
from allspark.engine.metrics import format_iou_table


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides) if args.config else None
    set_threads(args)
    result = run_evaluation(cfg, args.checkpoint, args.mode, args.out, args.device, overrides=args.overrides,
                            amp=args.amp, which=args.which, progress=not args.no_progress,
                            say=lambda line: print(f"allspark eval: {line}", file=sys.stderr))
    if result.get("written"):  # rank 0
        if result["warning"]:
            print(f"allspark eval: warning: {result['warning']}", file=sys.stderr)
        print(format_iou_table(result["iou"], result["class_names"], result["miou"]))
        print(f"wrote {result['written']} ({result['images']} images)")
    return 0


def register(sub) -> None:
    options = argparse.ArgumentParser(add_help=False)
    add_device_option(options)
    add_checkpoint_options(options, what="weights file or run directory; required. Without CONFIG the config saved "
                                         "in the weights is used", required=False)
    options.add_argument("--mode", choices=EVAL_MODES, default=None, help="default: eval.mode")
    add_threads_option(options)
    options.add_argument("--no-progress", action="store_true", help="no progress bar (or lines, off a terminal)")
    options.add_argument("--out", default=None, help="where eval.json goes (default: the checkpoint's run directory)")
    add_amp_option(options)
    parser = add_config_command(sub, "eval", options, run, config_optional=True, required=("--checkpoint",),
                                description="Evaluate a checkpoint on data.val_list: mIoU over the set, the per-class "
                                            "IoU table, and eval.json (mode, miou, iou, class names, confusion "
                                            "matrix) in the run directory or --out. Without CONFIG, the config saved "
                                            "in the weights is used.")
    parser.set_defaults(interrupted="nothing written (eval.json is written at the end)")
