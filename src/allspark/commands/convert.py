"""`allspark convert-official SRC DST`: a checkpoint of the authors' release as one of our weights files."""
from __future__ import annotations

import argparse
from pathlib import Path

from allspark.config.loading import apply_overrides, config_from_dict, load_config
from allspark.errors import OutputExistsError
from allspark.models.official import convert_official
from allspark.runs.weights_file import save_weights


def register(sub) -> None:
    """`allspark convert-official SRC DST.safetensors [--config C] [key=value ...] [--force]`."""
    parser = sub.add_parser(
        "convert-official", description="Convert a checkpoint of the AllSpark release (ModelBuilder layout) or of the "
                    "UniMatch V2 release (DINOv2 + DPT) into an allspark-seg safetensors file; the layout is read "
                    "from its keys. The config must give model.encoder, model.num_classes and model.crop_size "
                    "of the checkpoint, e.g. --config pascal/augmented/1_8/allspark, or model.encoder=mit_b5 "
                    "model.num_classes=21 model.crop_size=513 (UniMatch V2: model.encoder=dinov2_small "
                    "model.ablation=none method=sup model.crop_size=518).")
    parser.add_argument("src", help="release checkpoint (.pth)")
    parser.add_argument("dst", help="output weights file (.safetensors)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--config", help="YAML file or preset name (default: built-in defaults)")
    parser.add_argument("--entry", help="which state dict of the checkpoint to convert (default: 'model' when present; "
                                         "UniMatch V2 also saves its EMA teacher as 'model_ema')")
    parser.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    dst = Path(args.dst)
    if dst.exists() and not args.force:
        raise OutputExistsError(f"{dst} already exists; pass --force to overwrite it")
    if args.config:
        cfg = load_config(args.config, args.overrides)
    else:
        cfg = config_from_dict(apply_overrides({}, args.overrides), where="command line")
    model, dropped = convert_official(args.src, cfg, args.entry)
    save_weights(dst, model.state_dict(), cfg)
    if dropped:
        print(f"left out {len(dropped)} weights the release builds but never reads: {', '.join(dropped)}")
    m = cfg.model
    print(f"wrote {dst}: {len(model.state_dict())} tensors ({m.encoder}, {m.num_classes} classes, crop {m.crop_size}, "
          f"ablation {m.ablation})")
    return 0
