"""`allspark check-data CONFIG_OR_ROOT [key=value ...]`: one line per problem of a dataset, naming the file."""
from __future__ import annotations

import argparse

from allspark.commands.options import add_config_command
from allspark.config.schema import LAYOUTS
from allspark.data.checks import check_data


def run(args: argparse.Namespace) -> int:
    problems, summary = check_data(args.config, args.num_classes, args.layout, overrides=args.overrides)
    for line in problems:
        print(line)
    print(summary)
    return 1 if problems else 0


def register(sub) -> None:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--num-classes", type=int, help="K: mask values must be in [0, K) or 255")
    options.add_argument("--layout", choices=LAYOUTS, help="dataset layout (class count, labelIds conversion, tree)")
    add_config_command(sub, "check-data", options, run, metavar="CONFIG_OR_ROOT",
                       config_help="YAML config or preset (key=value overrides as for train), dataset folder or list",
                       description="Check a dataset: CONFIG_OR_ROOT is a YAML config or preset, with key=value "
                                   "overrides as `train` takes them, a directory with train/val/labeled/unlabeled.txt "
                                   "lists or a layout's tree, or one list file (paths relative to the nearest folder "
                                   "above it that holds its images). One line per problem naming the file; exit "
                                   "status 1 if any.")
