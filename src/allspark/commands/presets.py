"""`allspark presets [NAME] [-v]`: the shipped config presets, or one of them resolved."""
from __future__ import annotations

import argparse

import yaml

from allspark.config.loading import load_config
from allspark.config.schema import config_to_dict
from allspark.presets import listed_presets


def run(args: argparse.Namespace) -> int:
    if args.name:
        print(yaml.safe_dump(config_to_dict(load_config(args.name)), sort_keys=False), end="")
        return 0
    for name in listed_presets():
        if args.verbose:
            cfg = config_to_dict(load_config(name))
            print(f"{name:40s} {cfg['method']:9s} {cfg['model']['encoder']} crop {cfg['model']['crop_size']} "
                  f"lists {cfg['data']['labeled_list']}")
        else:
            print(name)
    return 0


def register(sub) -> None:
    p = sub.add_parser("presets", description="List the shipped config presets (every published protocol, sup / "
                                               "semi / allspark each), or print one resolved, every key with its "
                                               "value: the starting point of your own YAML file (`base: NAME`).")
    p.add_argument("name", nargs="?", metavar="NAME", help="a preset (or YAML file) to print resolved")
    p.add_argument("-v", "--verbose", action="store_true", help="show method, encoder, crop and split list")
    p.set_defaults(run=run)
