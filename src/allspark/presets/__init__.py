"""Every shipped preset, from one place: the hand-written YAML files beside this module (`demo`, `pascal/base`,
`camvid/allspark`), the protocol presets generated from the published tables (`allspark.presets.protocols`) and the
named recipes (`recipe: unimatch_v2`). `list_presets` says which exist (`listed_presets` those shown to
users), `find_preset` gives one."""
from __future__ import annotations

from pathlib import Path

from allspark.presets.protocols import GENERATED_PRESETS

FOLDER = Path(__file__).parent  # the hand-written presets: FOLDER/NAME.yaml

# `recipe: NAME` in a config: these keys, under whatever the config itself sets (README, recipes). For method sup
# only the train and data keys apply: UniMatch V2's labeled-only baseline (its supervised.py) trains with the same
# optimiser on the same labeled crops.
RECIPES = {
    "unimatch_v2": {
        "recipe": {"strong_views": True, "views": 2, "cutmix_prob": 0.5, "cutmix_partner": "flip",
                   "cutmix_boxes": "release", "comp_drop": True,
                   "threshold": 0.95, "teacher": "ema", "ema_momentum": 0.996, "passes": "auto"},
        "train": {"optimizer": "adamw", "lr": 5e-6, "lr_multi": 40.0, "weight_decay": 0.01, "lr_timing": "after"},
        "data": {"labeled_colour": False},  # its labeled crops (semi.py's train_l) are only rescaled, cropped, flipped
    },
}


def list_presets() -> list[str]:
    """The names of every preset, hand-written and generated, sorted."""
    files = (str(path.relative_to(FOLDER).with_suffix("")) for path in FOLDER.rglob("*.yaml"))
    return sorted({*files, *GENERATED_PRESETS})


def listed_presets() -> list[str]:
    """The presets `allspark presets` lists and a typo is matched against: all but the `base` files the others
    build on."""
    return [name for name in list_presets() if Path(name).name != "base"]


def find_preset(name: str) -> Path | dict | None:
    """Preset `name`: the file of a hand-written one (`demo`, `pascal/base.yaml`), the mapping of a generated one
    (`pascal/original/183/allspark`), or None."""
    if name in GENERATED_PRESETS:
        return GENERATED_PRESETS[name]
    for candidate in (FOLDER / f"{name}.yaml", FOLDER / name):
        if candidate.is_file() and candidate.suffix == ".yaml":
            return candidate
    return None
