"""`allspark viz features|grouping|memory|curves|confusion`: one PNG of the requested pixel size each.

The figures' modules are imported where a plot runs, not at the top: with the model they need they bring
torch, transformers and matplotlib, ~2.7 s of start-up for every command (python -X importtime -c
'import allspark.viz.grouping, allspark.models').
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from allspark.commands.options import add_checkpoint_options, add_device_option
from allspark.data.io import read_image
from allspark.data.layouts import class_names_and_palette


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


def _load(args):
    """(model, cfg, device): --checkpoint loaded on --device."""
    from allspark.distributed import resolve_device  # deferred: see the module docstring
    from allspark.models.weights import load_model  # deferred: see the module docstring

    device = resolve_device(args.device)
    model, cfg = load_model(args.checkpoint, which=args.which, device=device)
    return model, cfg, device


def _images(inputs: list[str], limit: int | None = None):
    """(file, RGB uint8, normalised tensor) for each readable input; unreadable ones are reported."""
    from allspark.data.normalize import normalize_image  # deferred: see the module docstring
    from allspark.inference.outputs import expand_inputs  # deferred: see the module docstring

    files, problems = expand_inputs(inputs)
    for line in problems:
        print(f"allspark viz: warning: {line}", file=sys.stderr)
    for path in files[:limit]:
        try:
            image = read_image(path)
        except (OSError, ValueError) as err:
            print(f"allspark viz: warning: {path}: skipped, {getattr(err, 'problem', err)}", file=sys.stderr)
            continue
        yield path, image, normalize_image(image)


def _features(args) -> int:
    from allspark.viz.features import feature_channels, pick_channels, plot_features  # deferred: see the docstring

    model, _, device = _load(args)
    found = list(_images([args.image], limit=1))
    if not found:
        print(f"allspark viz features: no readable image in {args.image}", file=sys.stderr)
        return 1
    path, image, tensor = found[0]
    before, after = feature_channels(model, tensor.to(device))
    channels = args.channels or pick_channels(before.shape[0], args.num_channels)
    plot_features(image, before, after, channels, args.out, args.size, title=f"{path.name}: c4 before / after AllSpark")
    return _done(args.out)


def _grouping(args) -> int:
    from allspark.viz.grouping import grouping_counts, plot_grouping  # deferred: see the module docstring

    model, cfg, device = _load(args)
    tensors = [tensor.to(device) for _, _, tensor in _images(args.inputs, args.max_images)]
    if not tensors:
        print("allspark viz grouping: no readable images among the inputs", file=sys.stderr)
        return 1
    counts = grouping_counts(model, tqdm(tensors, desc="grouping", unit="img", file=sys.stderr),
                             cfg.model.num_classes, probs=cfg.model.grouping == "probs")
    plot_grouping(counts, len(tensors), class_names_and_palette(cfg)[0], args.out, args.size)
    return _done(args.out)


def _memory(args) -> int:
    from allspark.viz.features import pick_channels  # deferred: see the module docstring
    from allspark.viz.memory import memory_maps, plot_memory  # deferred: see the module docstring

    model, cfg, _ = _load(args)
    maps = memory_maps(model)
    channels = args.channels or pick_channels(maps.shape[1], args.num_channels)
    plot_memory(maps, channels, class_names_and_palette(cfg)[0], args.out, args.size)
    return _done(args.out)


def _curves(args) -> int:
    from allspark.engine.runs import read_metrics  # deferred: see the module docstring
    from allspark.viz.curves import plot_curves  # deferred: see the module docstring

    plot_curves(read_metrics(args.run_dir), args.out, args.size, title=str(args.run_dir))
    return _done(args.out)


def _confusion(args) -> int:
    from allspark.viz.confusion import plot_confusion, read_eval  # deferred: see the module docstring

    plot_confusion(read_eval(args.eval), args.out, args.size)
    return _done(args.out)


def _done(out) -> int:
    print(f"wrote {out}")
    return 0


def _common(parser: argparse.ArgumentParser, size: str, checkpoint: bool) -> None:
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--size", type=parse_size, default=parse_size(size), help=f"WIDTHxHEIGHT in pixels (default {size})")
    if checkpoint:
        add_checkpoint_options(parser)
        add_device_option(parser)


def _channel_options(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument("--channels", type=_indices, help="channel indices, e.g. 3,17,42")
    parser.add_argument("--num-channels", type=int, default=default, help="evenly spread channels if --channels is unset")


def _guard(run):
    """Errors about input files become one clear line and exit status 1."""
    def wrapped(args) -> int:
        try:
            return run(args)
        except (OSError, ValueError) as err:
            print(f"allspark viz {args.plot}: {err}", file=sys.stderr)
            return 1
    return wrapped


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
