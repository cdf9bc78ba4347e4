"""The `allspark` command: one subcommand per job, each a thin call into the modules below."""
from __future__ import annotations

import argparse
import sys

from allspark.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="allspark", description="Semi-supervised segmentation with AllSpark.")
    sub = parser.add_subparsers(dest="command", required=True)
    # Each feature module has `register(sub)`, which adds its subparsers with `set_defaults(run=fn)`;
    # fn(args) returns the exit status. One import + register line per module.
    from allspark.data import checks, splits
    checks.register(sub)
    splits.register(sub)
    from allspark.engine import commands
    commands.register(sub)
    from allspark import predict
    predict.register(sub)
    from allspark.viz import commands as viz_commands
    viz_commands.register(sub)
    from allspark import export
    export.register(sub)
    from allspark.models import convert
    convert.register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
    except ConfigError as err:
        print(f"allspark {args.command}: config error: {err}", file=sys.stderr)
        code = 2
    sys.exit(code or 0)
