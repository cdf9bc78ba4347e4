"""`allspark viz features|grouping|memory|curves|confusion`: one PNG of the requested pixel size each, drawn by
`allspark.viz`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from allspark.commands.options import add_checkpoint_options, add_device_option
from allspark.runs.atomic import ensure_writable
from allspark.runs.metrics import read_metrics
from allspark.viz.checkpoint_figures import features_figure, grouping_figure, memory_figure
from allspark.viz.confusion import plot_confusion, read_eval
from allspark.viz.curves import plot_curves


def parse_size(text: str) -> tuple[int, int]:
    """argparse type: '1200x800' -> (1200, 800), width and height in pixels."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT in pixels, e.g. 1200x800; got {text!r}")
    return int(parts[0]), int(parts[1])


def _indices(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"channel indices must be comma-separated integers; got {text!r}") from None


def _features(args) -> list[str]:
    return features_figure(args.checkpoint, args.image, args.out, args.size, args.channels, args.num_channels,
                           args.which, args.device)


def _grouping(args) -> list[str]:
    return grouping_figure(args.checkpoint, args.inputs, args.out, args.size, args.max_images, args.which, args.device)


def _memory(args) -> list[str]:
    return memory_figure(args.checkpoint, args.out, args.size, args.channels, args.num_channels, args.which,
                         args.device)


def _curves(args) -> list[str]:
    plot_curves(read_metrics(args.run_dir), args.out, args.size, title=str(args.run_dir))
    return []


def _confusion(args) -> list[str]:
    plot_confusion(read_eval(args.eval), args.out, args.size)
    return []


def _common(parser: argparse.ArgumentParser, size: str, checkpoint: bool) -> None:
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--size", type=parse_size, default=parse_size(size), help=f"WIDTHxHEIGHT in pixels (default {size})")
    if checkpoint:
        add_checkpoint_options(parser)
        add_device_option(parser)


def _channel_options(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument("--channels", type=_indices, help="channel indices, e.g. 3,17,42")
    parser.add_argument("--num-channels", type=int, default=default, help="evenly spread channels if --channels is unset")


def _guard(draw):
    """Check that --out can be written, draw the figure, warn of each skipped input and say where it went."""
    def run(args) -> int:
        ensure_writable(Path(args.out).parent)  # before the model loads and the figure is drawn
        problems = draw(args)
        for line in problems:
            print(f"allspark viz: warning: {line}", file=sys.stderr)
        print(f"wrote {args.out}")
        return 0
    return run


def register(sub) -> None:
    viz = sub.add_parser("viz", help="figures: features, grouping, memory, curves, confusion")
    plots = viz.add_subparsers(dest="plot", required=True)
    p = plots.add_parser("features", help="c4 channels before and after the AllSpark module (paper Fig. 5)")
    p.add_argument("image", help="an image file")
    _channel_options(p, 6)
    _common(p, "1600x500", checkpoint=True)
    p.set_defaults(run=_guard(_features))
    p = plots.add_parser("grouping", help="channels assigned to each class by grouping (paper Fig. 6)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="unlabeled images: files, folders or globs")
    p.add_argument("--max-images", type=int, help="use at most this many images")
    _common(p, "1000x500", checkpoint=True)
    p.set_defaults(run=_guard(_grouping))
    p = plots.add_parser("memory", help="Semantic Memory channels per class slot (paper Fig. 7)")
    _channel_options(p, 8)
    _common(p, "1200x1200", checkpoint=True)
    p.set_defaults(run=_guard(_memory))
    p = plots.add_parser("curves", help="losses, learning rate and mIoU from a run's metrics.jsonl")
    p.add_argument("run_dir", type=Path, metavar="RUN", help="run directory or metrics.jsonl")
    _common(p, "1500x450", checkpoint=False)
    p.set_defaults(run=_guard(_curves))
    p = plots.add_parser("confusion", help="confusion matrix and per-class IoU from `allspark eval`")
    p.add_argument("eval", type=Path, help="eval.json or the folder holding it")
    _common(p, "1400x650", checkpoint=False)
    p.set_defaults(run=_guard(_confusion))
