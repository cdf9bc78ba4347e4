"""`allspark splits TRAIN_LIST --out DIR (--count N | --fraction F)`: labeled and unlabeled lists;
`allspark splits --add suggested.txt --out DIR`: move newly labelled images from one to the other."""
from __future__ import annotations

import argparse
from pathlib import Path

from allspark.config.schema import LAYOUTS
from allspark.data.io import list_fields
from allspark.data.splits import add_to_labeled, make_split, write_layout_list
from allspark.errors import UsageError


def _count(list_path: Path) -> int:
    """Samples of a list file (an empty one included): its lines less blank and comment lines."""
    return sum(1 for line in list_path.read_text().splitlines() if list_fields(line))


def run(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 1:
        raise UsageError(f"--count must be at least 1 (the number of labeled images); got {args.count}")
    if args.add:
        if args.train_list or args.count is not None or args.fraction is not None:
            raise UsageError("--add moves images between the lists in --out; give no TRAIN_LIST, --count or --fraction")
        moved, labeled, unlabeled = add_to_labeled(args.add, args.out, args.root)
        print(f"moved {moved} image(s) to {labeled} ({_count(labeled)} images); "
              f"{unlabeled} keeps {_count(unlabeled)}")
        return 0
    if not args.train_list or (args.count is None and args.fraction is None):
        raise UsageError("give TRAIN_LIST and --count or --fraction (or --add SUGGESTED)")
    source = Path(args.train_list)
    if source.is_dir():
        source = write_layout_list(source, args.layout, args.split, Path(args.out) / f"{args.split}.txt")
        print(f"wrote {source} (every {args.layout} pair of split '{args.split}')")
    labeled, unlabeled = make_split(source, args.out, args.count, args.fraction, args.seed, args.force)
    for path in (labeled, unlabeled):
        print(f"wrote {path} ({_count(path)} images)")
    return 0


def register(sub) -> None:
    parser = sub.add_parser("splits", description="Choose labeled images from TRAIN_LIST (lines 'image mask', or a dataset "
                                        "root read with --layout) and write OUT/labeled.txt and OUT/unlabeled.txt.")
    parser.add_argument("train_list", metavar="TRAIN_LIST", nargs="?")
    parser.add_argument("--out", required=True, help="output directory")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--count", type=int, help="number of labeled images, e.g. 92, 183, 366, 732, 1464")
    how.add_argument("--fraction", help="labeled fraction, e.g. 1/16, 1/8, 0.25 (rounded up)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="overwrite existing lists")
    parser.add_argument("--layout", choices=LAYOUTS, default="folder", help="layout when TRAIN_LIST is a dataset root")
    parser.add_argument("--split", default="train", help="split to list when TRAIN_LIST is a dataset root")
    parser.add_argument("--add", metavar="SUGGESTED", help="move the images of this list (`allspark suggest`'s "
                        "suggested.txt, once labelled) from OUT/unlabeled.txt to OUT/labeled.txt")
    parser.add_argument("--root", help="with --add: folder the masks' paths are relative to (default: the nearest "
                        "folder, from OUT up, under which the lists' images are)")
    parser.set_defaults(run=run)
