"""The rules a Config's values keep beyond their types: choice lists, ranges and the rules between keys.

Every error names the key at fault (ConfigError.keys), so that loading can say where it was set.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from allspark.config.schema import (ABLATIONS, AMP_MODES, BEST_OF, CUTMIX_BOXES, CUTMIX_PARTNERS, EVAL_MODES,
                                    GROUPINGS, LABELED_LOSSES, LAYOUTS, LR_TIMINGS, METHODS, MIN_CROP, MIOU_OVER,
                                    OPTIMIZER_KERNELS, OPTIMIZERS, PASSES, TEACHERS, WINDOW_PLACEMENTS, Config,
                                    RecipeConfig)
from allspark.errors import ConfigError
from allspark.encoders.specs import ENCODERS, HEADS, POS_EMBED_MODES, encoder_spec

_CHOICES = {
    "method": METHODS,
    "model.encoder": ENCODERS,  # read at each check, so an entry added to the registry is a valid name at once
    "model.head": HEADS,
    "model.pos_embed": POS_EMBED_MODES,
    "model.ablation": ABLATIONS,
    "model.grouping": GROUPINGS,
    "data.layout": LAYOUTS,
    "train.labeled_loss": LABELED_LOSSES,
    "train.amp": AMP_MODES,
    "eval.mode": EVAL_MODES,
    "eval.window_placement": WINDOW_PLACEMENTS,
    "eval.miou_over": MIOU_OVER,
    "recipe.teacher": TEACHERS,
    "train.best_of": BEST_OF,
    "recipe.cutmix_partner": CUTMIX_PARTNERS,
    "recipe.cutmix_boxes": CUTMIX_BOXES,
    "recipe.passes": PASSES,
    "train.optimizer": OPTIMIZERS,
    "train.lr_timing": LR_TIMINGS,
    "train.optimizer_kernel": OPTIMIZER_KERNELS,
}


def _get(cfg: Config, key: str) -> Any:
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


# (keys, test, what the value must be): ranges checked by `validate`; a null value is not checked
_RANGES = (
    (("model.num_classes", "model.heads", "model.embed_dim", "train.epochs", "train.max_iters",
      "train.batch_size", "train.accumulate", "train.checkpoint_every", "train.eval_every", "train.log_every"),
     lambda v: v > 0, "positive"),
    (("model.crop_size", "eval.crop_size"), lambda v: v >= MIN_CROP,
     f"at least {MIN_CROP} (the encoder's first stage reduces 8x8 tokens of a 32 px crop)"),
    (("train.lr", "train.lr_multi"), lambda v: 0 < v < math.inf, "positive and finite"),
    (("train.weight_decay", "recipe.unlabeled_weight"), lambda v: 0 <= v < math.inf, "zero or positive and finite"),
    (("data.workers", "train.warmup_epochs", "train.ohem_min_kept", "train.seed", "recipe.rampup_iters"), lambda v: v >= 0,
     "zero or positive"),
    (("train.momentum",), lambda v: 0 <= v < 1, "in [0, 1)"),
    (("train.ohem_thresh", "recipe.cutmix_prob", "recipe.threshold", "recipe.ema_momentum"), lambda v: 0 <= v <= 1,
     "in [0, 1]"),
    (("eval.stride_ratio",), lambda v: 0 < v <= 1, "in (0, 1]"),
    (("recipe.views",), lambda v: v in (1, 2), "1 or 2"),
)


def check_values(cfg: Config, prefix: str = "") -> None:
    """Check the choices and ranges of the keys starting with `prefix`; raise ConfigError naming the key."""
    for key, choices in _CHOICES.items():
        value = _get(cfg, key)
        if key.startswith(prefix) and value not in choices:
            raise ConfigError(f"key '{key}' must be one of {', '.join(choices)}; got {value!r}", key)
    for keys, test, what in _RANGES:
        for key in keys:
            value = _get(cfg, key)
            if key.startswith(prefix) and value is not None and not test(value):
                raise ConfigError(f"key '{key}' must be {what}; got {value!r}", key)


def validate(cfg: Config) -> None:
    """Check choices, ranges and cross-field rules; raise ConfigError naming the key."""
    check_values(cfg)
    if cfg.method in ("sup", "semi") and cfg.model.ablation != "none":
        raise ConfigError(f"key 'model.ablation' must be 'none' for method '{cfg.method}' (the baselines have no "
                          f"AllSpark module); got {cfg.model.ablation!r}", "model.ablation", "method")
    changed = [f"recipe.{name}" for name, value in dataclasses.asdict(cfg.recipe).items()
               if value != getattr(RecipeConfig, name)]
    if cfg.method == "sup" and changed:
        raise ConfigError(f"key '{changed[0]}' has no effect for method 'sup' (it trains on labeled images "
                          "only); leave the recipe section at its defaults or use method semi or allspark",
                          changed[0], "method")
    if cfg.method == "allspark" and cfg.model.ablation == "none":
        raise ConfigError("key 'model.ablation' is 'none' but method is 'allspark'; use method=semi for the "
                          "baseline or one of cca, cca_mem, full", "model.ablation", "method")
    if cfg.recipe.passes == "apart" and cfg.model.ablation != "none":
        raise ConfigError("key 'recipe.passes' is 'apart' but the model has the AllSpark module, whose labeled "
                          "branch reads the unlabeled half of the same pass; use recipe.passes=joint or auto",
                          "recipe.passes", "model.ablation")
    if cfg.recipe.comp_drop and cfg.recipe.views != 2:
        raise ConfigError(f"key 'recipe.comp_drop' pairs the two student views of each image; set recipe.views=2 "
                          f"(got {cfg.recipe.views})", "recipe.comp_drop", "recipe.views")
    _check_encoder(cfg)
    if cfg.train.best_of == "ema" and cfg.recipe.teacher != "ema":
        raise ConfigError(f"key 'train.best_of' is 'ema' but recipe.teacher is {cfg.recipe.teacher!r}: only an EMA "
                          "teacher is evaluated apart from the student; set recipe.teacher=ema or train.best_of=student",
                          "train.best_of", "recipe.teacher")


def _check_encoder(cfg: Config) -> None:
    """What the encoder asks of the head and the crops: DPT reads a ViT's four equal maps, a ViT's crops and
    windows are whole patches (any other input is resized to them, encoders.specs.fit_to_patch)."""
    spec = encoder_spec(cfg.model.encoder)
    if cfg.model.head == "dpt" and not spec.is_vit:
        raise ConfigError(f"key 'model.head' is 'dpt' but model.encoder {spec.name} is not a ViT (the DPT head reads "
                          "four maps at one stride); use model.head=segformer", "model.head", "model.encoder")
    if cfg.model.pos_embed != "release" and not spec.pos_embed_choice:
        raise ConfigError(f"key 'model.pos_embed' applies to the dinov2_* encoders only (model.encoder is "
                          f"{spec.name}); leave it at 'release'", "model.pos_embed", "model.encoder")
    for key in ("model.crop_size", "eval.crop_size"):
        size = _get(cfg, key)
        if spec.is_vit and size is not None and size % spec.patch:
            near = sorted({max(spec.patch, size // spec.patch * spec.patch), -(-size // spec.patch) * spec.patch})
            raise ConfigError(f"key '{key}' must be a multiple of {spec.name}'s patch size {spec.patch}; got {size} "
                              f"(try {' or '.join(map(str, near))})", key, "model.encoder")



def check_data_root(cfg: Config) -> None:
    """`data.root` must be a folder; a relative one is read from the current folder (a preset's
    `../shared/data/camvid-mini` too), which the error says with the path it was taken for."""
    root = Path(cfg.data.root)
    if root.is_dir():
        return
    where = "" if root.is_absolute() else f" (relative to the current folder, {Path.cwd()})"
    raise ConfigError(f"key 'data.root': no folder {root.resolve()}{where}; run from the folder data.root "
                      f"{cfg.data.root!r} is relative to, or set data.root to its absolute path", "data.root")
