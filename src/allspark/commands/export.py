"""`allspark export [OUT] --checkpoint RUN`: the per-image inference graph as ONNX, checked against PyTorch;
by default beside the weights, where `allspark predict` finds it (`predict.backends.export_path`)."""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from allspark.commands.options import add_checkpoint_options
from allspark.data.layouts import class_names_and_palette
from allspark.errors import CheckFailedError, CheckpointError, OutputExistsError
from allspark.extras import require_extra
from allspark.models.weights import load_model
from allspark.predict.backends import export_path, file_sha256
from allspark.predict.export import ensure_room, export_onnx, max_onnx_difference
from allspark.runs.atomic import ensure_writable
from allspark.runs.weights_file import resolve_weights


def run(args: argparse.Namespace) -> int:
    require_extra("export", "allspark export")
    weights = resolve_weights(args.checkpoint, args.which)
    out = Path(args.out) if args.out else export_path(weights)
    if out.exists() and not args.force:
        raise OutputExistsError(f"{out} already exists; pass --force to overwrite it")
    ensure_writable(out.parent)  # an unwritable OUT fails before the slow export, naming OUT's folder
    digest = file_sha256(weights)
    model, cfg = load_model(weights)
    if file_sha256(weights) != digest:  # e.g. a training run saved it meanwhile: the export must name its source
        raise CheckpointError(f"{weights} changed while it was read; run the export again")
    ensure_room(model, out)  # a full disk fails now, not after the tracing
    names, palette = class_names_and_palette(cfg)
    with warnings.catch_warnings():  # the exporter's and onnxscript's notes say nothing a user can act on
        warnings.simplefilter("ignore")
        export_onnx(model, cfg, out, args.example_size, class_names=names, palette=palette, source_sha256=digest)
        print(f"wrote {out}")
        if args.check:
            side = args.example_size or cfg.model.crop_size
            sizes = [(side, side), (side + 32, max(side - 16, 32))]
            diff = max_onnx_difference(model, out, sizes)
            print(f"onnxruntime vs PyTorch, inputs {sizes}: max |logit difference| {diff:.2e}")
            if diff > args.tolerance:
                raise CheckFailedError(f"{out}: logits differ from PyTorch's by {diff:.2e}, more than --tolerance "
                                       f"{args.tolerance}")
    return 0


def register(sub) -> None:
    parser = sub.add_parser("export")
    parser.add_argument("out", metavar="OUT", nargs="?",
                        help="output file (default: beside the weights, e.g. checkpoints/best.onnx, where "
                             "`allspark predict` uses it)")
    add_checkpoint_options(parser)
    parser.add_argument("--format", default="onnx", choices=("onnx",), help="only onnx")
    parser.add_argument("--example-size", type=int, help="side of the tracing example (default: model.crop_size)")
    parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                        help="compare onnxruntime with PyTorch at two sizes after exporting")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted logit difference")
    parser.add_argument("--force", action="store_true", help="overwrite OUT")
    parser.set_defaults(run=run, interrupted="no ONNX file written (an existing one is kept)")
