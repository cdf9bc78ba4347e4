"""`allspark presets [-v]`: the shipped config presets."""
from __future__ import annotations

import argparse
from pathlib import Path

from allspark.config import config_to_dict, list_presets, load_config


def run(args: argparse.Namespace) -> int:
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


def register(sub) -> None:
    p = sub.add_parser("presets")
    p.add_argument("-v", "--verbose", action="store_true", help="show method, encoder, crop and split list")
    p.set_defaults(run=run)
