"""The published protocols as tables, each setting written once; the protocol presets are generated from them.

AllSpark's grid is dataset x split x method (`pascal/original/183/allspark`, over the hand-written
`pascal/base.yaml` and its siblings). `allspark presets` lists them with the hand-written files;
`allspark presets NAME -v` shows one resolved."""
from __future__ import annotations

# AllSpark: preset folder -> (the hand-written base preset, the release's split-list folder, splits)
ALLSPARK_PROTOCOLS = {
    "pascal/original": ("pascal/base", "splits/pascal", ("92", "183", "366", "732", "1464")),
    "pascal/augmented": ("pascal/base", "splits/pascal", ("1_16", "1_8", "1_4", "1_2")),
    "pascal/u2pl": ("pascal/base", "splits/pascal_u2pl", ("1_16", "1_8", "1_4", "1_2")),
    "cityscapes": ("cityscapes/base", "splits/cityscapes", ("1_16", "1_8", "1_4", "1_2")),
    "coco": ("coco/base", "splits/coco", ("1_512", "1_256", "1_128", "1_64")),
}
# the protocols' recommended recipe (README, recipes): strong views with CutMix, an EMA teacher at threshold 0.95
PROTOCOL_RECIPE = {"strong_views": True, "cutmix_prob": 0.5, "threshold": 0.95, "unlabeled_weight": 1.0,
                   "teacher": "ema", "ema_momentum": 0.996}

def _lists(folder: str, split: str, method: str) -> dict:
    lists = {"labeled_list": f"{folder}/{split}/labeled.txt"}
    if method != "sup":
        lists["unlabeled_list"] = f"{folder}/{split}/unlabeled.txt"
    return lists


def _allspark_presets() -> dict[str, dict]:
    presets = {}
    for name, (base, folder, splits) in ALLSPARK_PROTOCOLS.items():
        for split in splits:
            for method in ("sup", "semi", "allspark"):
                presets[f"{name}/{split}/{method}"] = {"base": base, "method": method,
                                                       "data": _lists(folder, split, method),
                                                       "run_dir": f"runs/{name}/{split}/{method}"}
            presets[f"{name}/{split}/recipe"] = {**presets[f"{name}/{split}/allspark"], "recipe": dict(PROTOCOL_RECIPE),
                                                 "run_dir": f"runs/{name}/{split}/allspark_recipe"}
    return presets


GENERATED_PRESETS: dict[str, dict] = _allspark_presets()
