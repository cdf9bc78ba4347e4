"""Arguments that several subcommands share: `--threads`, `--device`, `--amp`, `--checkpoint`, and CONFIG with
overrides."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from allspark.config.schema import AMP_MODES
from allspark.runs.folder import CHECKPOINTS
from allspark.threads import busy_cores, default_threads, usable_cores

DEVICES = ("auto", "cpu", "cuda")  # `--device` of every command that runs a model; auto: CUDA when available


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
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads (default: the cores not busy at start, shared by this host's ranks)")


def set_threads(args: argparse.Namespace) -> None:
    """torch's CPU threads: `--threads N`, else OMP_NUM_THREADS when set, else the cores free at start split among
    this host's ranks (one thread more than the free cores makes every step wait for the busy one); says so in one
    line when that is fewer than all cores."""
    if args.threads:
        torch.set_num_threads(args.threads)
        return
    if os.environ.get("OMP_NUM_THREADS"):
        return  # torch already reads it
    cores, busy = usable_cores(), busy_cores()
    threads = default_threads(cores, busy, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if threads < cores:
        print(f"allspark: {threads} CPU thread(s) of {cores} cores ({busy:.1f} busy at start, shared by this host's "
              "processes); --threads N to choose", file=sys.stderr)
    torch.set_num_threads(threads)


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """`--device auto|cpu|cuda`, the same for every command that runs a model."""
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA when available")


def add_amp_option(parser: argparse.ArgumentParser) -> None:
    """`--amp auto|off|bf16|fp16`: the precision of the forward passes, as `train.amp` for training."""
    parser.add_argument("--amp", choices=AMP_MODES, default="auto",
                        help="auto: bf16 where the device runs it natively (a CPU with AMX-BF16 or AVX512-BF16, a "
                             "CUDA GPU with bf16), else fp32; off: fp32")


def add_checkpoint_options(parser: argparse.ArgumentParser, what: str = "run directory or .safetensors weights file",
                           required: bool = True) -> None:
    """`--checkpoint RUN_OR_FILE` (`what` it accepts; a config command checks it with `required`, see
    `add_config_command`) and `--which best|latest`."""
    parser.add_argument("--checkpoint", required=required, help=what)
    parser.add_argument("--which", default="best", choices=CHECKPOINTS, help="checkpoint of a run directory")


def add_config_command(sub, name: str, options: argparse.ArgumentParser, run, config_optional: bool = False,
                       required: tuple[str, ...] = (), metavar: str = "config",
                       config_help: str = "YAML file or preset name (see `allspark presets`)",
                       **kwargs) -> argparse.ArgumentParser:
    """`allspark NAME [options] CONFIG [key=value | options ...]`: options may come before or after the
    overrides (argparse alone cannot mix a list of positionals with options, so the tail is re-parsed, and the
    `required` options, e.g. "--checkpoint", are checked after both parts).
    With `config_optional`, CONFIG may be left out (args.config None) and the first argument is an override.
    `metavar` and `config_help` name and describe CONFIG. Returns the subparser (for more defaults)."""
    p = sub.add_parser(name, parents=[options], **kwargs)
    p.add_argument("config", nargs="?" if config_optional else None, metavar=metavar,
                   help=config_help + ("; optional" if config_optional else ""))
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="key=value", help="config overrides, e.g. train.lr=0.01")

    def parse_tail(args: argparse.Namespace) -> int:
        if config_optional and args.config and "=" in args.config and not Path(args.config).is_file():
            args.config, args.rest = None, [args.config, *args.rest]
        args, extra = options.parse_known_args(args.rest, namespace=args)
        bad = [item for item in extra if "=" not in item or item.startswith("-")]
        if bad:
            p.error(f"unrecognized arguments: {' '.join(bad)} (config overrides look like key=value)")
        missing = [option for option in required if getattr(args, option.lstrip("-").replace("-", "_")) is None]
        if missing:
            p.error(f"the following arguments are required: {', '.join(missing)}")
        args.overrides = extra
        return run(args)

    p.set_defaults(run=parse_tail)
    return p
