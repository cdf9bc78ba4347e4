"""`allspark predict INPUT... --checkpoint RUN --out DIR`: mask, colour and overlay PNGs for every image."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from allspark.commands.options import (add_amp_option, add_checkpoint_options, add_device_option,
                                       add_threads_option, positive_int, set_threads)
from allspark.config.schema import MIN_CROP, WHOLE_IMAGE_MODES
from allspark.engine.memory_budget import check_inference, largest_images
from allspark.errors import InputError, OutputExistsError
from allspark.predict.backends import ENGINES
from allspark.predict.outputs import LEGEND_FILES, expand_inputs, output_paths, run_predict, write_legend
from allspark.predict.predictor import Predictor
from allspark.runs.atomic import ensure_writable


def parse_scales(text: str) -> tuple[float, ...]:
    """argparse type: `0.75,1,1.25` -> (0.75, 1.0, 1.25), every factor positive."""
    try:
        scales = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"scales must be comma-separated numbers, e.g. 0.75,1,1.25; got {text!r}")
    if not scales or any(s <= 0 for s in scales):
        raise argparse.ArgumentTypeError(f"scales must be positive; got {text!r}")
    return scales


def check_memory(predictor: Predictor, files: list[Path], batch_size: int) -> None:
    """MemoryBudgetError before predicting when the piece the largest input is predicted in (whole, window or tile,
    at the largest scale) cannot fit; the PyTorch engine only (onnxruntime's memory is its own)."""
    sizes = [size for size in largest_images(files) if min(size) >= MIN_CROP]  # smaller ones are skipped
    if predictor.engine != "torch" or not sizes:
        return
    (h, w), options = sizes[0], predictor.options
    tile = predictor.tiling(h, w)
    if tile is None and options["mode"] == "whole":
        scale = max(options["scales"])
        check_inference(predictor.cfg.model, predictor.device, batch_size, (round(h * scale), round(w * scale)),
                        "predicting an image whole",
                        "use --tile auto with a lower --max-pixels (larger images go in tiles), or a lower --batch-size",
                        predictor.precision.mode)
        return
    window = tile or options["window"]
    check_inference(predictor.cfg.model, predictor.device, 1 if tile else batch_size, (window, window),
                    "predicting a window", "lower --window", predictor.precision.mode)


def run(args: argparse.Namespace) -> int:
    set_threads(args)
    files, problems = expand_inputs(args.inputs)
    out = Path(args.out)
    if args.skip_existing:  # an interrupted folder continues: inputs whose three outputs are there are done, and
        # an input left with part of its outputs is predicted again, over them
        files = [path for path in files if not all(t.exists() for t in output_paths(out, path).values())]
    if not files:  # said before the model loads or OUT is made
        if problems:
            raise InputError(f"no images to predict: {'; '.join(problems)}")
        print(f"nothing to predict: every input has its outputs in {out}")
        return 0
    targets: dict[Path, Path] = {out / name: Path("--legend") for name in LEGEND_FILES if args.legend}
    for path in files:
        for target in output_paths(out, path).values():
            if target in targets:
                raise OutputExistsError(f"{path} and {targets[target]} both write {target}; predict them into "
                                        "different --out folders")
            targets[target] = path
    existing = [t for t in targets if t.exists()]
    if existing and not (args.force or args.skip_existing):
        raise OutputExistsError(f"{len(existing)} output file(s) already exist, e.g. {existing[0]}; pass --force "
                                "to overwrite them, or --skip-existing to predict only the inputs without outputs")
    ensure_writable(out)  # before the model loads
    predictor = Predictor(args.checkpoint, device=args.device, mode=args.mode, window=args.window,
                          stride_ratio=args.stride_ratio, flip=args.flip, scales=args.scales, which=args.which,
                          tile=args.tile, max_pixels=args.max_pixels, engine=args.engine, amp=args.amp)
    check_memory(predictor, files, args.batch_size)
    print(f"allspark predict: {predictor.engine_note}; {predictor.precision.line()}", file=sys.stderr)
    written, skipped = run_predict(predictor, files, out, batch_size=args.batch_size, alpha=args.alpha)
    if args.legend:
        write_legend(out, predictor.palette, predictor.class_names)
    problems.extend(skipped)
    for line in problems:
        print(f"allspark predict: warning: {line}", file=sys.stderr)
    print(f"wrote {written} prediction(s) ({3 * written} files) to {out}"
          + (f"; {len(problems)} input(s) skipped" if problems else ""))
    return 1 if problems else 0


def register(sub) -> None:
    parser = sub.add_parser("predict", description="Write <stem>.png (class indices), <stem>_color.png (palette) and "
                                        "<stem>_overlay.png (image | blend) for every input image.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    add_checkpoint_options(parser, what="run directory, .safetensors weights or `allspark export` .onnx file")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--mode", choices=WHOLE_IMAGE_MODES, help="default: the config's eval mode")
    parser.add_argument("--window", type=int, help="sliding-window size (default: the eval/training crop), also the "
                        "window of tiled images (default: the larger of 512 and the training crop)")
    parser.add_argument("--stride-ratio", type=float, help="window stride as a fraction of the window")
    parser.add_argument("--flip", action="store_true", help="average in the horizontally flipped prediction")
    parser.add_argument("--scales", type=parse_scales, default=(1.0,), help="multi-scale TTA, e.g. 0.75,1,1.25")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="images of equal size predicted together")
    parser.add_argument("--alpha", type=float, default=0.5, help="mask opacity in the overlay")
    parser.add_argument("--tile", choices=("auto", "off"), default="auto",
                        help="auto: images over --max-pixels go through sliding windows one at a time (bounded "
                             "memory); off: always in one piece")
    parser.add_argument("--max-pixels", type=positive_int, default=None,
                        help="largest image predicted in one piece with --tile auto (default: 1024x1024 pixels)")
    parser.add_argument("--legend", action="store_true",
                        help="also write legend.png and legend.json (class index, name and colour)")
    add_threads_option(parser)
    add_device_option(parser)
    add_amp_option(parser)
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="onnx: the graph `allspark export` wrote beside the weights (made from them, checked by "
                             "SHA-256) under onnxruntime on the CPU, about 2x PyTorch; auto: onnx where it can run, "
                             "else torch")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    parser.add_argument("--skip-existing", action="store_true",
                        help="leave out the inputs whose outputs all exist (an interrupted run continues)")
    parser.set_defaults(run=run, interrupted="the predictions written so far are kept; the same command with "
                                             "--skip-existing predicts the rest")
