"""The published protocols as tables, each setting written once; the protocol presets are generated from them.

AllSpark's grid is dataset x split x method (`pascal/original/183/allspark`, over the hand-written
`pascal/base.yaml` and its siblings); UniMatch V2's adds the DINOv2 size (`unimatch_v2/pascal/92/base/allspark`).
`allspark presets` lists both with the hand-written files; `allspark presets NAME -v` shows one resolved."""
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

# UniMatch V2 (its configs/*.yaml and README; METHODS.md 8): per dataset the settings and the splits it publishes.
# Batch sizes are per GPU (the release trains on 4). mIoU is averaged over all classes and `best` follows the EMA
# teacher, as the release reports. ADE20K: the release's config locks the encoder, but its published ADE20K logs
# trained it unlocked; we follow the logs (model.freeze_encoder stays false). Its README points ADE20K users to its
# prepared annotations (0-149, 255 ignore), which its code reads as they are: layout ade20k_prepared.
_V2_TRAIN = {"epochs": 60, "batch_size": 4, "best_of": "ema"}
UNIMATCH_V2_PROTOCOLS = {
    "pascal": ({"model": {"num_classes": 21, "crop_size": 518},
                "data": {"layout": "pascal", "root": "data/pascal", "val_list": "splits/pascal/val.txt"},
                "train": _V2_TRAIN, "eval": {"mode": "whole"}},
               "splits/pascal", ("92", "183", "366", "732", "1464")),
    "cityscapes": ({"model": {"num_classes": 19, "crop_size": 798},
                    "data": {"layout": "cityscapes", "root": "data/cityscapes",
                             "val_list": "splits/cityscapes/val.txt"},
                    "train": {**_V2_TRAIN, "epochs": 180, "batch_size": 2, "labeled_loss": "ohem",
                              "ohem_thresh": 0.7, "ohem_min_kept": 200000},
                    "eval": {"mode": "sliding", "stride_ratio": 2 / 3}},
                   "splits/cityscapes", ("1_16", "1_8", "1_4", "1_2")),
    "coco": ({"model": {"num_classes": 81, "crop_size": 518},
              "data": {"layout": "coco", "root": "data/coco", "val_list": "splits/coco/val.txt"},
              "train": {**_V2_TRAIN, "epochs": 20}, "eval": {"mode": "whole"}},
             "splits/coco", ("1_512", "1_256", "1_128", "1_64", "1_32")),
    "ade20k": ({"model": {"num_classes": 150, "crop_size": 518},
                "data": {"layout": "ade20k_prepared", "root": "data/ade20k", "val_list": "splits/ade20k/val.txt"},
                "train": {**_V2_TRAIN, "batch_size": 2}, "eval": {"mode": "whole"}},
               "splits/ade20k", ("1_64", "1_32", "1_16", "1_8")),
}
UNIMATCH_V2_SIZES = ("small", "base")
# our method name -> (method, the preset's name): the release's supervised.py and unimatch_v2.py, and AllSpark
# with its module under the same loop
UNIMATCH_V2_METHODS = {"sup": "sup", "unimatch_v2": "semi", "allspark": "allspark"}


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


def _unimatch_v2_presets() -> dict[str, dict]:
    presets = {}
    for dataset, (settings, folder, splits) in UNIMATCH_V2_PROTOCOLS.items():
        for split in splits:
            for size in UNIMATCH_V2_SIZES:
                for name, method in UNIMATCH_V2_METHODS.items():
                    model = {**settings["model"], "encoder": f"dinov2_{size}", "head": "dpt",
                             "pretrained": f"facebook/dinov2-{size}"}
                    presets[f"unimatch_v2/{dataset}/{split}/{size}/{name}"] = {
                        "method": method, "recipe": "unimatch_v2", "model": model,
                        "data": {**settings["data"], **_lists(folder, split, method)},
                        # supervised.py has no EMA teacher: its `best` follows the model it trains
                        "train": {**settings["train"], **({"best_of": "student"} if method == "sup" else {})},
                        "eval": {**settings["eval"], "miou_over": "all"},
                        "run_dir": f"runs/unimatch_v2/{dataset}/{split}/{size}/{name}"}
    return presets


GENERATED_PRESETS: dict[str, dict] = {**_allspark_presets(), **_unimatch_v2_presets()}
