"""`allspark check-data CONFIG_OR_ROOT`: one line per problem of a dataset, naming the file."""
from __future__ import annotations

import argparse

from allspark.config.schema import LAYOUTS
from allspark.data.checks import check_data


def run(args: argparse.Namespace) -> int:
    problems, summary = check_data(args.source, args.num_classes, args.layout)
    for line in problems:
        print(line)
    print(summary)
    return 1 if problems else 0


def register(sub) -> None:
    parser = sub.add_parser("check-data", description="Check a dataset: CONFIG_OR_ROOT is a YAML config or preset, a directory "
                                        "with train/val/labeled/unlabeled.txt lists or a layout's tree, or one list "
                                        "file (paths relative to the nearest folder above it that holds its images). "
                                        "One line per problem naming the file; exit status 1 if any.")
    parser.add_argument("source", metavar="CONFIG_OR_ROOT")
    parser.add_argument("--num-classes", type=int, help="K: mask values must be in [0, K) or 255")
    parser.add_argument("--layout", choices=LAYOUTS, help="dataset layout (class count, labelIds conversion, tree)")
    parser.set_defaults(run=run)
