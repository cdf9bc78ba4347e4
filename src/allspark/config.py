"""Run configuration: plain dataclasses, YAML presets, `key=value` overrides, validation.

Every error names the key (and the file) at fault, so a typo in a 60-line YAML is found at once.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from allspark.errors import ConfigError
from allspark.protocols import GENERATED_PRESETS
from allspark.encoders.specs import ENCODERS, HEADS, POS_EMBED_MODES, encoder_spec

PRESETS_DIR = Path(__file__).parent / "configs"

ABLATIONS = ("none", "cca", "cca_mem", "full")
GROUPINGS = ("probs", "logits")
METHODS = ("sup", "semi", "allspark")
# The method says whether the model has the AllSpark module: model.ablation is `none` for the baselines, and for
# AllSpark one of the Table 5 rows (full unless set). The model itself reads only model.ablation.
METHOD_ABLATION = {"sup": "none", "semi": "none", "allspark": "full"}
LAYOUTS = ("pascal", "cityscapes", "coco", "ade20k", "ade20k_prepared", "camvid", "folder", "synthetic")  # data.layout; see data.layouts
LABELED_LOSSES = ("ce", "ohem")
AMP_MODES = ("off", "bf16", "fp16")  # train.amp and `eval --amp`
EVAL_MODES = ("whole", "sliding", "center")  # eval.mode and `eval --mode`
WHOLE_IMAGE_MODES = ("whole", "sliding")  # the eval modes that predict every pixel: `predict --mode`
WINDOW_PLACEMENTS = ("aligned", "release")
MIOU_OVER = ("present", "all")
TEACHERS = ("student", "ema")
CUTMIX_BOXES = ("symmetric", "release")  # recipe.cutmix_boxes: how a box's shape and place are drawn (data/views.py)
CUTMIX_PARTNERS = ("roll", "flip")  # recipe.cutmix_partner: the next image of the batch, or its mirror (the release)
PASSES = ("joint", "apart", "auto")  # recipe.passes: the student's images in one pass or two; auto: two unless AllSpark
OPTIMIZERS = ("sgd", "adamw")  # train.optimizer
LR_TIMINGS = ("before", "after")  # train.lr_timing: the poly lr of step i set before it, or after step i - 1
BEST_OF = ("student", "ema")  # train.best_of: whose validation mIoU `best` follows
ENGINES = ("auto", "torch", "onnx")  # `predict --engine`: PyTorch or an `allspark export` graph under onnxruntime
MIN_CROP = 32  # the smallest crop or window MiT can encode: its first attention reduces 8x8 tokens at stride 4
DEVICES = ("auto", "cpu", "cuda")  # `--device` of every command that runs a model; auto: CUDA when available


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2 booleans: only true/false, so `amp: off` stays the string "off"."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _first in "tTfF":
    _Loader.yaml_implicit_resolvers.setdefault(_first, []).insert(
        0, ("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")))


def load_yaml(text: str):
    """Parse YAML text with `_Loader`."""
    return yaml.load(text, Loader=_Loader)


@dataclass
class ModelConfig:
    encoder: str = "mit_b0"  # a name of allspark.encoders.specs.ENCODERS: mit_b0..b5, dinov2_*, dinov2_reg_*, dinov3_*
    head: str = "auto"  # segformer | dpt | auto: the encoder's default (dpt for ViTs, segformer otherwise)
    num_classes: int = 21
    crop_size: int = 513  # training crop: fixes the memory's token count d (METHODS.md 1)
    heads: int = 2
    embed_dim: int | None = None  # SegFormer head width E; None: the encoder's (256 for b0/b1, 768 for b2..b5)
    ablation: str = "full"  # none (plain SegFormer) | cca | cca_mem (no grouping) | full; a config file's default
    # follows `method` (METHOD_ABLATION), so only an AllSpark row of Table 5 other than full needs setting
    grouping: str = "probs"  # probs (paper) | logits (the release's behaviour)
    pretrained: str | None = None  # HF hub id, local HF directory, an original mit_bX.pth or dinov2_*_pretrain.pth
    freeze_encoder: bool = False  # train the heads only (UniMatch V2's lock_backbone)
    pos_embed: str = "release"  # DINOv2 position table resized as its release (release) or to the exact grid


@dataclass
class DataConfig:
    layout: str = "folder"  # pascal | cityscapes | coco | camvid | folder | synthetic
    root: str = ""
    labeled_list: str = ""  # "image mask" lines, paths relative to root
    unlabeled_list: str | None = ""  # "image [mask]" lines; the mask, if any, is not used; none for method sup
    val_list: str = ""
    workers: int = 2
    skip_bad_samples: bool = False  # log and skip unreadable samples instead of stopping
    labeled_colour: bool = True  # colour jitter, grey and blur on labeled crops (AllSpark's release; UniMatch V2: off)


@dataclass
class TrainConfig:
    epochs: int = 80  # one epoch = one pass over the unlabeled list (labeled list for sup)
    max_iters: int | None = None  # cap on total iterations, for budgeted runs
    batch_size: int = 2  # per process, for each of labeled and unlabeled
    lr: float = 0.001  # encoder lr; the rest uses lr * lr_multi
    lr_multi: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int = 5  # epochs before S-Mem becomes the key/value source
    labeled_loss: str = "ce"  # ce | ohem
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 200000
    amp: str = "off"  # off | bf16 | fp16
    compile: bool = False
    checkpoint_every: int = 200  # iterations between `latest` checkpoints (also at the run's end)
    eval_every: int = 1  # epochs between evaluations
    log_every: int = 20  # iterations between scalar logs
    seed: int = 0
    best_of: str = "student"  # student | ema: whose validation mIoU `best` follows (ema: recipe.teacher=ema)
    accumulate: int = 1  # micro-batches of batch_size per optimiser step: one GPU takes a multi-GPU batch
    activation_checkpointing: bool = False  # recompute encoder blocks in the backward pass: less memory, more time
    optimizer: str = "sgd"  # sgd (momentum) | adamw (betas 0.9/0.999, UniMatch V2's); both take weight_decay
    lr_timing: str = "before"  # before: step i at poly(i) (METHODS.md 5) | after: at poly(i - 1), UniMatch V2's


@dataclass
class EvalConfig:
    mode: str = "whole"  # whole | sliding | center
    crop_size: int | None = None  # window / centre-crop size; None: model.crop_size
    stride_ratio: float = 2 / 3  # sliding-window stride as a fraction of the window
    window_placement: str = "aligned"  # aligned (full windows, last one at the border) | release (last one clipped)
    miou_over: str = "present"  # present (classes in GT or prediction) | all (all K, absent = 0: the release)


@dataclass
class RecipeConfig:
    """How unlabeled images teach (README, recipes); the defaults are the paper's loop exactly."""

    strong_views: bool = False  # the student learns on a colour-jittered, grey, blurred copy of the teacher's view
    cutmix_prob: float = 0.0  # per unlabeled image: chance of a box pasted from the next image of the batch
    threshold: float = 0.0  # pseudo-labels with teacher confidence below it are left out (0: none)
    unlabeled_weight: float = 1.0  # loss = (labeled + unlabeled_weight * unlabeled) / 2
    teacher: str = "student"  # student (the paper) | ema (an exponential moving average of the student)
    ema_momentum: float = 0.999  # teacher = m * teacher + (1 - m) * student after each step
    rampup_iters: int = 0  # the unlabeled weight rises over these first steps (Mean Teacher's curve); 0: from step 0
    views: int = 1  # student views per unlabeled image: 2 gives each its own strong view and CutMix box (UniMatch V2)
    cutmix_partner: str = "roll"  # roll: a box shows the next image of the batch | flip: the mirrored batch's (release)
    cutmix_boxes: str = "symmetric"  # symmetric: aspect log-uniform, placed where it fits | release: UniMatch's draw
    comp_drop: bool = False  # complementary channel dropout on the encoder features of the two views (views 2)
    passes: str = "joint"  # joint: [labeled; unlabeled] in one student pass (the paper) | apart: two (UniMatch V2)
    # | auto: apart, or joint where the model has the AllSpark module (it reads both halves of one pass)


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


@dataclass
class Config:
    method: str = "allspark"  # sup (SupBaseline) | semi (SemiBaseline) | allspark
    run_dir: str = "runs/default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)


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
}


# what YAML 1.1 leaves a string but people write for numbers: 1e-3, 5E4, 2e+5 (no dot before the exponent)
_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _from_scientific(text: str, hint: type, key: str) -> float | int:
    """`text` in scientific notation as a float, or as an int when `hint` is int and the value is whole (2e5)."""
    value = float(text)
    if hint is float:
        return value
    if not value.is_integer():
        raise ConfigError(f"key '{key}' expects int, got {text!r} (not a whole number)", key)
    return int(value)


def _check_type(value: Any, hint: Any, key: str) -> Any:
    """Return `value` converted to `hint` where lossless (int -> float), else raise ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, key)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, str) and _SCIENTIFIC.match(value.strip()):
        return _from_scientific(value.strip(), hint, key)
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"key '{key}' expects {hint.__name__}, got {value!r}", key)
    if not isinstance(value, hint):
        raise ConfigError(f"key '{key}' expects {hint.__name__}, got {value!r} ({type(value).__name__})", key)
    return value


def _build(cls: type, data: dict, prefix: str):
    if not isinstance(data, dict):
        section = prefix.rstrip(".")
        keys = (section,) if section else ()
        raise ConfigError(f"section '{section or '<top>'}' must be a mapping, got {data!r}", *keys)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = prefix + unknown[0]
        raise ConfigError(f"unknown key '{key}' (known: {', '.join(sorted(names))})", key)
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(value, hint, prefix + name)
    return cls(**kwargs)


def config_from_dict(data: dict, where: str = "<config>", command_line: Sequence[str] = ()) -> Config:
    """Build and validate a Config from a nested mapping (missing keys take defaults; a missing model.ablation
    the method's, METHOD_ABLATION). Errors start with `where`, or with "command line" for a key among
    `command_line` (the overridden keys)."""
    try:
        data = expand_recipe(data or {})
        cfg = _build(Config, data, "")
        if "ablation" not in ((data or {}).get("model") or {}):
            cfg.model.ablation = METHOD_ABLATION.get(cfg.method, cfg.model.ablation)
        validate(cfg)
    except ConfigError as err:
        given = any(_related(key, other) for key in err.keys for other in command_line)
        raise ConfigError(f"{'command line' if given else where}: {err}", *err.keys) from None
    return cfg


def expand_recipe(data: dict, over: bool = False) -> dict:
    """`data` with a named recipe (`recipe: unimatch_v2`) replaced by its keys (RECIPES); for method sup only the
    recipe's train and data keys. The config's own keys stay over the recipe's, or with `over` (a `recipe=NAME`
    override) the recipe's over those set so far."""
    name = data.get("recipe")
    if not isinstance(name, str):
        return data
    if name not in RECIPES:
        raise ConfigError(f"key 'recipe' names no recipe: {name!r} (known: {', '.join(RECIPES)}; or a mapping of "
                          "recipe keys)", "recipe")
    named = RECIPES[name]
    expanded = dict(data)
    for section in ("train", "data"):
        own = data.get(section) or {}
        if not isinstance(own, dict):
            return data  # _build reports the malformed section
        expanded[section] = {**own, **named[section]} if over else {**named[section], **own}
    if data.get("method") == "sup":
        expanded.pop("recipe")
    else:
        expanded["recipe"] = dict(named["recipe"])
    return expanded


def model_config_from_dict(data: dict, where: str = "<model config>") -> ModelConfig:
    """Build and validate a ModelConfig on its own: the model's keys need no method."""
    try:
        model = _build(ModelConfig, data or {}, "model.")
        _check_values(Config(model=model), "model.")
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}", *err.keys) from None
    return model


def _related(key: str, other: str) -> bool:
    """True when one key is the other or a section holding it ('train' and 'train.lr')."""
    return key == other or key.startswith(other + ".") or other.startswith(key + ".")


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def with_absolute_paths(cfg: Config, base: str | Path | None = None) -> Config:
    """A copy of `cfg` with `run_dir`, `data.root` and a local `model.pretrained` absolute, relative ones read
    against `base` (the current folder): what a run stores, so that its folder works from any folder. List paths
    stay as they are: they are relative to `data.root`."""
    def absolute(path: str) -> str:
        return os.path.abspath(os.path.join(Path.cwd() if base is None else base, path))

    pretrained = cfg.model.pretrained
    if pretrained and Path(absolute(pretrained)).exists():  # a hub id such as nvidia/mit-b0 is not a local path
        pretrained = absolute(pretrained)
    return dataclasses.replace(cfg, run_dir=absolute(cfg.run_dir),
                               data=dataclasses.replace(cfg.data, root=absolute(cfg.data.root)),
                               model=dataclasses.replace(cfg.model, pretrained=pretrained))


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


def _check_values(cfg: Config, prefix: str = "") -> None:
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
    _check_values(cfg)
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


def parse_override(text: str) -> tuple[str, Any]:
    """Split `train.lr=0.01` into ('train.lr', 0.01); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': value is not valid YAML ({err})") from None
    return key, value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Return a copy of the nested mapping `data` with each `key=value` set."""
    data = load_yaml(yaml.safe_dump(data or {}))
    for text in overrides:
        key, value = parse_override(text)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
        node[parts[-1]] = value
        if key == "recipe":
            try:
                data = expand_recipe(data, over=True)  # so that later overrides can change its keys
            except ConfigError as err:
                raise ConfigError(f"command line: {err}", *err.keys) from None
    return data


def resolve_source(source: str | Path) -> Path | str:
    """A YAML path, a preset file shipped in the package (`demo`, `pascal/base`) or the name of a generated protocol
    preset (`pascal/original/183/allspark`, allspark.protocols), returned as it is."""
    path = Path(source)
    if path.is_file():
        return path
    if str(source) in GENERATED_PRESETS:
        return str(source)
    for candidate in (PRESETS_DIR / f"{source}.yaml", PRESETS_DIR / str(source)):
        if candidate.is_file():
            return candidate
    close = difflib.get_close_matches(str(source), list_presets(), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}?" if close else "`allspark presets` lists them"
    raise ConfigError(f"config '{source}' is neither a file nor a preset; {hint}")


def list_presets() -> list[str]:
    files = (str(p.relative_to(PRESETS_DIR).with_suffix("")) for p in PRESETS_DIR.rglob("*.yaml"))
    return sorted({*files, *GENERATED_PRESETS})


def load_yaml_with_base(source: Path | str) -> dict:
    """Read a YAML file or a generated preset (resolve_source); a top-level `base: other.yaml` (relative to the file)
    or `base: camvid/allspark` (a preset) is merged underneath."""
    if isinstance(source, str):
        data = expand_recipe(GENERATED_PRESETS[source])
        where = Path(".")
    else:
        try:
            data = load_yaml(source.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{source}: not valid YAML ({err})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: top level must be a mapping")
        data = expand_recipe(data)  # here too, so that a file's overrides and a later file's keys go on top
        where = source.parent
    data = dict(data)
    base = data.pop("base", None)
    if base is None:
        return data
    beside = (where / str(base)).resolve()
    return _merge(load_yaml_with_base(beside if isinstance(source, Path) and beside.is_file() else resolve_source(base)),
                  data)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(source: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML file or preset, apply `key=value` overrides, validate."""
    path = resolve_source(source)
    data = apply_overrides(load_yaml_with_base(path), overrides)
    return config_from_dict(data, where=str(path), command_line=[parse_override(text)[0] for text in overrides])
