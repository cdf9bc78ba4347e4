"""Subcommands `train`, `eval`, `presets` and `demo`: thin wrappers around the engine."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from allspark.config import config_to_dict, list_presets, load_config

DEVICES = ("auto", "cpu", "cuda")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """`--threads N` (read by `set_threads`)."""
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: all cores)")


def set_threads(args: argparse.Namespace) -> None:
    """`--threads N`: torch's CPU threads (the default, all cores, oversubscribes a shared machine)."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def _run_train(args: argparse.Namespace) -> int:
    from allspark.engine.trainer import NonFiniteLossError, train

    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _relaunch_with_torchrun(args.nproc)
    cfg = load_config(args.config, args.overrides)
    set_threads(args)
    try:
        train(cfg, force_config=args.force_config, device=args.device, progress=not args.no_progress)
    except NonFiniteLossError as err:
        print(f"allspark train: error: {err}; stopped, checkpoints/latest keeps the last good state", file=sys.stderr)
        return 3
    return 0


def _relaunch_with_torchrun(nproc: int) -> int:
    """`allspark train --nproc N ...` -> `torchrun --nproc_per_node=N -m allspark train ...` (same arguments)."""
    argv = sys.argv[1:]
    rest, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--nproc":
            skip = True
            continue
        if item.startswith("--nproc="):
            continue
        rest.append(item)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "allspark", *rest]
    return subprocess.call(command)


def _run_eval(args: argparse.Namespace) -> int:
    from allspark.engine.evaluate import run_evaluation

    if not args.checkpoint:
        print("allspark eval: --checkpoint PATH is required (a weights file or a run directory)", file=sys.stderr)
        return 2
    cfg = load_config(args.config, args.overrides) if args.config else None
    set_threads(args)
    run_evaluation(cfg, args.checkpoint, args.mode, args.out, args.device, overrides=args.overrides, amp=args.amp)
    return 0


def _run_presets(args: argparse.Namespace) -> int:
    for name in list_presets():
        if Path(name).name == "base":
            continue
        if args.verbose:
            cfg = config_to_dict(load_config(name))
            print(f"{name:40s} {cfg['method']:9s} {cfg['model']['encoder']} crop {cfg['model']['crop_size']} "
                  f"lists {cfg['data']['labeled_list']}")
        else:
            print(name)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from allspark.engine.demo import run_demo

    run_demo(out=Path(args.out), data=Path(args.data), iters=args.iters, threads=args.threads)
    return 0


def _add_config_command(sub, name: str, options: argparse.ArgumentParser, run, config_optional: bool = False,
                        **kwargs) -> None:
    """`allspark NAME [options] CONFIG [key=value | options ...]`: options may come before or after the
    overrides (argparse alone cannot mix a list of positionals with options, so the tail is re-parsed).
    With `config_optional`, CONFIG may be left out (args.config None) and the first argument is an override."""
    p = sub.add_parser(name, parents=[options], **kwargs)
    p.add_argument("config", nargs="?" if config_optional else None,
                   help="YAML file or preset name (see `allspark presets`)" + ("; optional" if config_optional else ""))
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="key=value", help="config overrides, e.g. train.lr=0.01")

    def parse_tail(args: argparse.Namespace) -> int:
        if config_optional and args.config and "=" in args.config and not Path(args.config).is_file():
            args.config, args.rest = None, [args.config, *args.rest]
        args, extra = options.parse_known_args(args.rest, namespace=args)
        bad = [item for item in extra if "=" not in item or item.startswith("-")]
        if bad:
            p.error(f"unrecognized arguments: {' '.join(bad)} (config overrides look like key=value)")
        args.overrides = extra
        return run(args)

    p.set_defaults(run=parse_tail)


def register(sub) -> None:
    """Add `train`, `eval`, `presets` and `demo` to the `allspark` parser."""
    train_opts = argparse.ArgumentParser(add_help=False)
    train_opts.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA when available")
    train_opts.add_argument("--force-config", action="store_true",
                            help="continue a run directory whose saved config.yaml differs from this config")
    train_opts.add_argument("--nproc", type=int, default=1, help="processes on this machine (relaunches under torchrun)")
    train_opts.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_threads_option(train_opts)
    _add_config_command(sub, "train", train_opts, _run_train, help="train (or resume) a run",
                        description="Train in cfg.run_dir; an existing run directory continues from its latest "
                                    "checkpoint. Multi-GPU: torchrun --nproc_per_node=N -m allspark train ...")

    eval_opts = argparse.ArgumentParser(add_help=False)
    eval_opts.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA when available")
    eval_opts.add_argument("--checkpoint", help="weights file or run directory (its best checkpoint); required. "
                                                "Without CONFIG the config saved in the weights is used")
    eval_opts.add_argument("--mode", choices=("whole", "sliding", "center"), default=None, help="default: eval.mode")
    add_threads_option(eval_opts)
    eval_opts.add_argument("--out", default=None, help="where eval.json goes (default: the checkpoint's run directory)")
    eval_opts.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off",
                           help="mixed precision of the forward passes (bf16: faster on CPUs with AVX-512 BF16)")
    _add_config_command(sub, "eval", eval_opts, _run_eval, config_optional=True,
                        help="evaluate a checkpoint: mIoU and per-class IoU")

    p = sub.add_parser("presets", help="list the shipped config presets")
    p.add_argument("-v", "--verbose", action="store_true", help="show method, encoder, crop and split list")
    p.set_defaults(run=_run_presets)

    p = sub.add_parser("demo", help="synthetic data, SupBaseline vs AllSpark on CPU in a few minutes")
    p.add_argument("--out", default="runs/demo", help="parent of the run directories (one per row of the table)")
    p.add_argument("--data", default="demo_data", help="synthetic dataset folder (generated if missing)")
    p.add_argument("--iters", type=int, default=None, help="training iterations per method (default: the preset)")
    add_threads_option(p)
    p.set_defaults(run=_run_demo)
