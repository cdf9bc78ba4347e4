"""Dataset layouts as data: class names, palettes, and where images and masks live on disk.

Split files (UniMatch / AllSpark style) already hold relative paths, so a layout mostly names the
classes; `Layout.pairs` finds (image, mask) pairs in a raw tree for check-data and split making.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from allspark.config.schema import LAYOUTS, Config
from allspark.data.io import WrongLayoutDataError, list_fields
from allspark.errors import InputError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def voc_palette(num_classes: int) -> np.ndarray:
    """The Pascal VOC colour map: class bits spread over the high bits of r, g, b; (K, 3) uint8."""
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for index in range(num_classes):
        code, rgb = index, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((code >> channel) & 1) << (7 - bit)
            code >>= 3
        palette[index] = rgb
    return palette


PASCAL_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
CITYSCAPES_PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
], dtype=np.uint8)
# Cityscapes labelIds (0..33) of the 19 evaluated classes, in train-id order; every other id -> 255.
CITYSCAPES_EVAL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
_CITYSCAPES_TRAIN_ID_LUT = np.full(256, 255, dtype=np.uint8)
_CITYSCAPES_TRAIN_ID_LUT[list(CITYSCAPES_EVAL_IDS)] = np.arange(len(CITYSCAPES_EVAL_IDS), dtype=np.uint8)

COCO_CLASSES = (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie",
    "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian", "bicyclist",
)
CAMVID_PALETTE = np.array([
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
], dtype=np.uint8)

# ADE20K's 150 SceneParsing classes in annotation order (raw value k + 1 is class k; raw 0 is "other")
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier",
    "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
_ADE20K_TRAIN_ID_LUT = np.full(256, 255, dtype=np.uint8)
_ADE20K_TRAIN_ID_LUT[1:len(ADE20K_CLASSES) + 1] = np.arange(len(ADE20K_CLASSES), dtype=np.uint8)


def cityscapes_label_ids_to_train_ids(mask: np.ndarray) -> np.ndarray:
    """Map a Cityscapes `labelIds` mask to the 19 train ids (255 for every unevaluated id)."""
    return _CITYSCAPES_TRAIN_ID_LUT[mask]



def ade20k_raw_to_train_ids(mask: np.ndarray) -> np.ndarray:
    """Map a raw ADEChallengeData2016 annotation (0 = other, 1..150 the classes) to train ids 0..149 with
    255 for "other", the preparation behind UniMatch V2's downloadable annotations."""
    return _ADE20K_TRAIN_ID_LUT[mask]


@dataclass(frozen=True, eq=False)
class Layout:
    """Class names and palette of a dataset, and the rules that pair its images with masks.

    `image_globs` and `mask_templates` may use `{split}`; mask templates also use `{stem}` (the image
    file name without `image_suffix`, or without its extension) and `{sub}` (the image's folder below
    the fixed part of its glob). The first glob that finds files wins; per image, the first mask
    template whose file exists wins (else the first, which check-data then reports as missing).
    """

    name: str
    class_names: tuple[str, ...]
    palette: np.ndarray  # (K, 3) uint8
    image_globs: tuple[str, ...] = ()
    mask_templates: tuple[str, ...] = ()
    image_suffix: str = ""
    names_file: str = ""  # a file of image stems per split (Pascal); each replaces the glob's '*'
    splits: tuple[str, ...] = ("train", "val")
    mask_converters: tuple[tuple[str, object], ...] = ()  # (mask file suffix, function to train ids)
    masks: str = ""  # what its mask files hold, for messages
    foreign_marks: tuple[tuple[int, str], ...] = ()  # (value, layout): a mask holding it was made for that layout

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def convert_mask(self, mask: np.ndarray, mask_path: str | Path) -> np.ndarray:
        """Masks stored in another id space (Cityscapes `labelIds`) become train ids; others pass through. A mask
        holding a value this layout's masks never hold is refused, naming the layout that reads it."""
        for value, other in self.foreign_marks:
            if (mask == value).any():  # one pass over the decoded mask
                raise WrongLayoutDataError(mask_path, f"mask holds {value}, which {self.masks} never holds "
                                           f"(data.layout={self.name}); it looks like {_BUILTIN[other].masks}: "
                                           f"set data.layout={other}")
        for suffix, convert in self.mask_converters:
            if str(mask_path).endswith(suffix):
                return convert(mask)
        return mask

    def pairs(self, root: str | Path, split: str = "train") -> list[tuple[str, str]]:
        """(image, mask) paths relative to `root` for one split, sorted."""
        root = Path(root)
        for pattern in self.image_globs:
            pattern = pattern.format(split=split)
            images = self._images(root, pattern, split)
            if images:
                head = pattern.split("*")[0]
                fixed = head.rsplit("/", 1)[0] if "/" in head else ""
                return [(image, self._mask_for(root, image, fixed, split)) for image in images]
        return []

    def _images(self, root: Path, pattern: str, split: str) -> list[str]:
        if self.names_file:
            names_path = root / self.names_file.format(split=split)
            if not names_path.is_file():
                raise FileNotFoundError(f"{names_path}: split file of layout '{self.name}' not found "
                                        f"(expected one image stem per line for split '{split}')")
            stems = [fields[0] for fields in map(list_fields, names_path.read_text().splitlines()) if fields]
            return [pattern.replace("*", stem) for stem in stems]
        found = (p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        return sorted(p.relative_to(root).as_posix() for p in found)

    def _mask_for(self, root: Path, image: str, fixed: str, split: str) -> str:
        path = PurePosixPath(image)
        name = path.name
        stem = name[: -len(self.image_suffix)] if self.image_suffix and name.endswith(self.image_suffix) else path.stem
        sub = path.parent.relative_to(fixed).as_posix() if fixed else path.parent.as_posix()
        candidates = [PurePosixPath(t.format(split=split, sub=sub, stem=stem)).as_posix() for t in self.mask_templates]
        return next((c for c in candidates if (root / c).is_file()), candidates[0])


def read_classes_file(path: str | Path) -> tuple[tuple[str, ...], np.ndarray]:
    """`classes.txt`: one class per line, `name` or `name r g b`; missing colours come from the built-in
    layout with exactly these class names (e.g. CamVid's palette for CamVid's 11 names), else the VOC map; blank
    and `#` comment lines are skipped."""
    names, colours = [], []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        parts = list_fields(line)
        if not parts:
            continue
        if len(parts) >= 4 and all(p.isdigit() for p in parts[-3:]):
            rgb = tuple(int(p) for p in parts[-3:])
            if max(rgb) > 255:
                raise InputError(f"{path} line {number}: colour values must be 0..255, found {rgb}")
            names.append(" ".join(parts[:-3]))
            colours.append(rgb)
        else:
            names.append(" ".join(parts))
            colours.append(None)
    if not names:
        raise InputError(f"{path}: no class names (expected one per line, optionally followed by r g b)")
    known = (layout.palette for layout in _BUILTIN.values() if layout.class_names == tuple(names))
    default = next(known, None)
    default = voc_palette(len(names)) if default is None else default
    palette = np.array([c if c is not None else default[i] for i, c in enumerate(colours)], dtype=np.uint8)
    return tuple(names), palette


_FOLDER = dict(image_globs=("images/**/*",), mask_templates=("masks/{sub}/{stem}.png",), splits=("all",))

_BUILTIN = {
    "pascal": Layout(
        "pascal", PASCAL_CLASSES, voc_palette(21),
        image_globs=("JPEGImages/*.jpg",),
        mask_templates=("SegmentationClass/{stem}.png", "SegmentationClassAug/{stem}.png"),
        names_file="ImageSets/Segmentation/{split}.txt", splits=("train", "val")),
    "cityscapes": Layout(
        "cityscapes", CITYSCAPES_CLASSES, CITYSCAPES_PALETTE,
        image_globs=("leftImg8bit/{split}/*/*_leftImg8bit.png",), image_suffix="_leftImg8bit.png",
        mask_templates=("gtFine/{split}/{sub}/{stem}_gtFine_labelTrainIds.png",
                        "gtFine/{split}/{sub}/{stem}_gtFine_labelIds.png"),
        mask_converters=(("_gtFine_labelIds.png", cityscapes_label_ids_to_train_ids),)),
    "coco": Layout(
        "coco", COCO_CLASSES, voc_palette(81),
        image_globs=("{split}/*.jpg",), mask_templates=("masks/{split}/{stem}.png", "masks/{stem}.png"),
        splits=("train2017", "val2017")),
    "ade20k": Layout(
        "ade20k", ADE20K_CLASSES, voc_palette(len(ADE20K_CLASSES)),
        image_globs=("images/{split}/*.jpg",), mask_templates=("annotations/{split}/{stem}.png",),
        splits=("training", "validation"), mask_converters=((".png", ade20k_raw_to_train_ids),),
        masks="a raw ADEChallengeData2016 annotation (0 other, 1-150 the classes)",
        foreign_marks=((255, "ade20k_prepared"),)),
    "ade20k_prepared": Layout(
        "ade20k_prepared", ADE20K_CLASSES, voc_palette(len(ADE20K_CLASSES)),
        image_globs=("images/{split}/*.jpg",), mask_templates=("annotations/{split}/{stem}.png",),
        splits=("training", "validation"),
        masks="a prepared annotation (0-149 the classes, 255 ignore: UniMatch V2's download)",
        foreign_marks=((150, "ade20k"),)),
    "camvid": Layout(
        "camvid", CAMVID_CLASSES, CAMVID_PALETTE,
        image_globs=("images/{split}/*", "{split}/*"),
        mask_templates=("labels/{split}/{stem}.png", "{split}annot/{stem}.png"),
        splits=("train", "val", "test")),
}


def mask_converter(name: str):
    """The layout's mask conversion to train ids (Cityscapes `labelIds`, raw ADE20K) with its refusal of another
    layout's masks, or None; needs no classes.txt."""
    return _BUILTIN[name].convert_mask if name in _BUILTIN else None


def get_layout(name: str, root: str | Path | None = None) -> Layout:
    """The layout `name`; `folder` and `synthetic` read their classes from `root/classes.txt`."""
    if name in _BUILTIN:
        return _BUILTIN[name]
    if name not in LAYOUTS:
        raise InputError(f"unknown layout '{name}'; known: {', '.join(LAYOUTS)}")
    if root is None:
        raise InputError(f"layout '{name}' needs the dataset root: its classes come from ROOT/classes.txt")
    classes = Path(root) / "classes.txt"
    if not classes.is_file():
        raise FileNotFoundError(f"{classes}: layout '{name}' expects a classes.txt (one class name per line, "
                                "optionally followed by its colour as r g b)")
    names, palette = read_classes_file(classes)
    return Layout(name, names, palette, **_FOLDER)


def class_names_and_palette(cfg: Config) -> tuple[list[str], np.ndarray]:
    """The K class names and (K, 3) uint8 palette that label a model's output everywhere (eval.json, metrics,
    predict, export, figures): those of `data.layout`, when it can be read here and has exactly
    `model.num_classes` classes; else the class indices as names and the VOC colours (e.g. the dataset root is
    on another machine)."""
    k = cfg.model.num_classes
    try:
        found = get_layout(cfg.data.layout, cfg.data.root)
    except (OSError, ValueError):
        found = None
    if found is None or found.num_classes != k:
        return [str(i) for i in range(k)], voc_palette(k)
    return list(found.class_names), np.asarray(found.palette, dtype=np.uint8)
