"""`check-data`: read every listed file of a dataset and report each problem, one line per file."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence


from allspark.config.loading import load_config
from allspark.config.validation import check_data_root
from allspark.data.io import check_pair, list_root, read_image, read_list, read_mask
from allspark.data.layouts import Layout, get_layout, read_classes_file
from allspark.errors import ConfigError, DataError, UsageError
from allspark.progress import progress_bar


def sample_problems(image_path: Path, mask_path: Path | None, num_classes: int,
                    convert: Callable | None = None) -> list[str]:
    """Every problem of one sample as `path: problem` lines (image and mask checked independently)."""
    problems, image, mask = [], None, None
    try:
        image = read_image(image_path)
    except DataError as err:
        problems.append(str(err))
    if mask_path is None:
        return problems
    try:
        mask = read_mask(mask_path, convert)
        # without a readable image only the values can be checked: compare the mask's size with itself
        check_pair(image if image is not None else mask[..., None], mask, mask_path, num_classes)
    except DataError as err:
        problems.append(str(err))
    return problems


def class_count_problem(layout_name: str, root: str | Path, num_classes: int) -> str | None:
    """A line when the dataset's class count is not `num_classes` (the model would train with index names and a
    wrong palette, or never see a class): a built-in layout's own count, or a folder dataset's classes.txt;
    else None."""
    path = Path(root) / "classes.txt"
    if layout_name not in ("folder", "synthetic"):
        count = get_layout(layout_name).num_classes
        return None if count == num_classes else (
            f"layout '{layout_name}' has {count} classes but model.num_classes is {num_classes}; set "
            f"model.num_classes={count}, or data.layout=folder with a classes.txt for other classes")
    if not path.is_file():
        return None
    try:
        listed = len(read_classes_file(path)[0])
    except ValueError as err:
        return f"{path}: not a valid class list ({err})"
    if listed == num_classes:
        return None
    return (f"{path}: lists {listed} classes but model.num_classes is {num_classes}; "
            f"set model.num_classes={listed} or edit {path.name}")


LIST_NAMES = ("train", "val", "labeled", "unlabeled")
MASKED_LISTS = ("train", "val", "labeled")  # every line names a mask; in other lists a mask is optional


def _layout_or_none(name: str | None, root: Path) -> Layout | None:
    """The layout, or None where there is none to know: no name, or a folder tree without classes.txt."""
    if name is None or (name in ("folder", "synthetic") and not (root / "classes.txt").is_file()):
        return None
    return get_layout(name, root)


def _is_list(path: Path) -> bool:
    """Whether `path` names a list file (`image [mask]` lines): any file but a YAML config."""
    return path.is_file() and path.suffix.lower() not in (".yaml", ".yml")


def _sources(source: str, num_classes: int | None, layout_name: str | None, overrides: Sequence[str] = ()):
    """(root, {list name: list path}, K, layout) from a config/preset (with `overrides`), a dataset root or one list
    file (its root the folder its images are under: io.list_root)."""
    path = Path(source)
    if overrides and (path.is_dir() or _is_list(path)):
        raise UsageError(f"{source} is no config; key=value overrides ({overrides[0]}) apply to a config")
    if _is_list(path):
        root = list_root(path, read_list(path, need_masks=False)) or path.absolute().parent
        lists = {path.stem: path}
    elif path.is_dir():
        root = path
        lists = {name: path / f"{name}.txt" for name in LIST_NAMES if (path / f"{name}.txt").is_file()}
    else:
        cfg = load_config(source, overrides)
        check_data_root(cfg)
        root = Path(cfg.data.root)
        keys = {"labeled": cfg.data.labeled_list, "unlabeled": cfg.data.unlabeled_list, "val": cfg.data.val_list}
        lists = {name: root / value for name, value in keys.items() if value}
        layout = _layout_or_none(layout_name or cfg.data.layout, root)
        return root, lists, num_classes or cfg.model.num_classes, layout
    if layout_name is None and (root / "classes.txt").is_file():
        layout_name = "folder"
    layout = _layout_or_none(layout_name, root)
    num_classes = num_classes or (layout.num_classes if layout else None)
    if num_classes is None:
        raise ConfigError(f"{root}: cannot tell the number of classes; pass --num-classes K or --layout L, "
                          "or add a classes.txt (one class name per line)")
    return root, lists, num_classes, layout


def _entries(root: Path, lists: dict[str, Path], layout: Layout | None, problems: list[str]) -> dict:
    """{list name: [(image, mask or None)]}; from the list files, else from the layout's own splits."""
    entries = {}
    for name, list_path in lists.items():
        try:
            entries[name] = read_list(list_path, need_masks=name in MASKED_LISTS)
        except DataError as err:
            problems.append(str(err))
    if not lists and layout is not None:
        for split in layout.splits:
            try:
                pairs = layout.pairs(root, split)
            except FileNotFoundError as err:  # a split file the layout names is absent
                problems.append(str(err))
                continue
            if pairs:
                entries[split] = pairs
    return entries


def check_data(source: str, num_classes: int | None = None, layout_name: str | None = None,
               progress: bool = True, overrides: Sequence[str] = ()) -> tuple[list[str], str]:
    """Every problem of a dataset as `path: problem` lines, and a one-line summary; `overrides` (`key=value`)
    apply to a config source, as `train` applies them."""
    root, lists, num_classes, layout = _sources(source, num_classes, layout_name, overrides)
    mismatch = class_count_problem(layout.name, root, num_classes) if layout is not None else None
    problems: list[str] = [mismatch] if mismatch else []
    entries = _entries(root, lists, layout, problems)
    if not entries and not problems:
        problems.append(f"{root}: no list files ({', '.join(n + '.txt' for n in LIST_NAMES)}) and no "
                        f"images found with layout '{layout.name if layout else 'folder'}'")
    samples = dict.fromkeys(  # an ordered set: a sample in several lists is read once
        (root / image, None if name == "unlabeled" or mask is None else root / mask)
        for name, items in entries.items() for image, mask in items)
    convert = layout.convert_mask if layout is not None else None
    for image_path, mask_path in progress_bar(samples, desc="check-data", unit="sample", enabled=progress):
        problems.extend(sample_problems(image_path, mask_path, num_classes, convert))
    if "labeled" in entries and "unlabeled" in entries:
        labeled = {image for image, _ in entries["labeled"]}
        problems.extend(f"{root / image}: listed in both {lists['labeled'].name} and {lists['unlabeled'].name}"
                        for image, _ in entries["unlabeled"] if image in labeled)
    summary = (f"check-data: {len(samples)} samples in {len(entries)} lists ({', '.join(entries) or 'none'}) "
               f"under {root}, {num_classes} classes: {len(problems) or 'no'} problem{'s' * (len(problems) != 1)}")
    return problems, summary
