"""`allspark import-labels EXPORT --root DATA --out SPLITS`: the masks drawn in Label Studio (a JSON export) or CVAT
(a Segmentation mask 1.1 zip) written into the dataset, and their images moved to the labeled list."""
from __future__ import annotations

import argparse

from allspark.config.schema import LAYOUTS
from allspark.extras import require_extra
from allspark.labeling.import_labels import import_labels


def run(args: argparse.Namespace) -> int:
    if not args.export.lower().endswith(".zip"):
        require_extra("label", "import-labels of a Label Studio export")
    done = import_labels(args.export, args.root, args.out, args.layout, args.force, progress=not args.no_progress)
    for image, why in done.left:
        print(f"left unlabeled ({why}): {image}")
    print(f"import-labels: {len(done.written)} mask(s) written, {done.unchanged} already there, {done.moved} "
          f"image(s) moved to {args.out}/labeled.txt, {len(done.left)} left unlabeled")
    return 0


def register(sub) -> None:
    parser = sub.add_parser("import-labels", description="Read a Label Studio JSON export (brush and polygon "
                            "regions) or a CVAT 'Segmentation mask 1.1' zip, write each annotated image's class-index "
                            "mask where its unlabeled.txt line (else the layout) puts it (255 where nothing or the "
                            "'ignore' label was drawn), check it as check-data does, and move the images from "
                            "SPLITS/unlabeled.txt to SPLITS/labeled.txt. Class names are matched by name. Images "
                            "whose annotation is missing or skipped stay unlabeled and are named. Running it again "
                            "changes nothing.")
    parser.add_argument("export", metavar="EXPORT", help="Label Studio JSON export, or CVAT zip")
    parser.add_argument("--root", required=True, help="the data root: the lists' paths are relative to it")
    parser.add_argument("--out", required=True, metavar="SPLITS", help="folder of labeled.txt and unlabeled.txt")
    parser.add_argument("--layout", choices=LAYOUTS, default="folder",
                        help="the dataset's class names (folder: ROOT/classes.txt) and, for images whose list line "
                             "names no mask, where masks go")
    parser.add_argument("--force", action="store_true", help="replace mask files that are there with other pixels")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)
