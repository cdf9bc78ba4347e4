"""`allspark suggest --checkpoint RUN --count N [--list unlabeled.txt] --out DIR [--export label-studio|cvat]`: which
images to label next, with the model's masks as pre-annotations for the labelling tools."""
from __future__ import annotations

import argparse

from allspark.commands.options import (add_amp_option, add_checkpoint_options, add_device_option,
                                       add_threads_option, positive_int, set_threads)
from allspark.extras import require_extra
from allspark.labeling.export import FORMATS
from allspark.labeling.label_studio import LOCAL_FILES
from allspark.suggest.outputs import SHEET
from allspark.suggest.run import suggest
from allspark.suggest.selection import STRATEGIES
from allspark.viz.contact_sheet import save_contact_sheet


def run(args: argparse.Namespace) -> int:
    set_threads(args)
    exports = list(dict.fromkeys(args.export or []))
    if "label-studio" in exports:
        require_extra("label", "suggest --export label-studio")
    result = suggest(args.checkpoint, args.out, args.count, list_path=args.list, root=args.root,
                     labeled_list=args.labeled, which=args.which, strategy=args.strategy, batch_size=args.batch_size,
                     max_side=args.max_side, device=args.device, force=args.force, say=print, exports=exports,
                     image_prefix=args.image_url, amp=args.amp)
    if result is None:  # a torchrun rank other than 0: its share is scored
        return 0
    captions = [f"#{number} {row['image'].rsplit('/', 1)[-1]}\nscore {float(row['score']):.3f} "
                f"unc {float(row['uncertainty']):.3f} rare {float(row['rarity']):.2f}"
                for number, row in enumerate(result.chosen, 1)]
    sheet = save_contact_sheet(result.suggested.with_name(SHEET), result.sheet, captions, result.palette,
                               result.class_names)
    print(f"{result.note}\nwrote {result.suggested} ({len(result.chosen)} images, best first), {result.scores} and "
          f"{sheet}")
    if result.exports:
        print(f"wrote {', '.join(map(str, result.exports))}\nlabel them, then: allspark import-labels EXPORT "
              "--root DATA_ROOT --out SPLITS_DIR")
    else:
        print(f"label them, then: allspark splits --add {result.suggested} --out SPLITS_DIR")
    return 0


def register(sub) -> None:
    parser = sub.add_parser("suggest", description="Score every unlabeled image with a trained model (class-balanced "
                            "entropy, lifted by classes rare in the labeled masks, and pooled encoder features for "
                            "diversity) and write OUT/suggested.txt (best first), OUT/scores.csv and "
                            "OUT/contact_sheet.png. Resumes from OUT/scoring/ when interrupted, and scores only the "
                            "images new to a changed list; under torchrun each rank scores a share.")
    add_checkpoint_options(parser)
    parser.add_argument("--count", type=positive_int, required=True, help="how many images to suggest")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--list", help="the images to choose from, a list file (default: the run's unlabeled list)")
    parser.add_argument("--root", help="folder the list's paths are relative to (default: the run's data.root)")
    parser.add_argument("--labeled", help="the labeled list: class shares and images to differ from (default: the "
                                          "run's)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="both",
                        help="both: uncertainty x distance to the labeled and chosen images (default); uncertainty "
                             "or diversity alone")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="images of equal size scored together")
    parser.add_argument("--max-side", type=positive_int, default=1024,
                        help="images are shrunk to this longer side for scoring")
    parser.add_argument("--force", action="store_true",
                        help="score every image again, dropping OUT/scoring/ (needed for another model or --max-side)")
    parser.add_argument("--export", action="append", choices=FORMATS,
                        help="also write the chosen images with the model's masks as pre-annotations: "
                             "OUT/label-studio/{tasks.json,labeling_config.xml} or OUT/cvat/annotations.zip "
                             "(CVAT's Segmentation mask 1.1); repeat for both")
    parser.add_argument("--image-url", default=LOCAL_FILES, metavar="PREFIX",
                        help="Label Studio reaches an image at PREFIX + its path in the list (default: "
                             f"{LOCAL_FILES}, Label Studio's local files: start it with "
                             "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and "
                             "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=the data root)")
    add_threads_option(parser)
    add_device_option(parser)
    add_amp_option(parser)
    parser.set_defaults(run=run, interrupted="the scores so far are kept in OUT/scoring/; the same command resumes "
                                             "from them")
