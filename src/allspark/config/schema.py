"""The run configuration's schema: one dataclass per section, each key's type and default, and every choice list.

Checked by hand (config.loading: types; config.validation: choices, ranges) and not by pydantic v2, because its lax
mode takes what these checks refuse (True or 2.0 for an int, a quoted "0.5") while its strict mode refuses YAML 1.1's
1e-3, and its messages are not the tested ones ("must be at least 32"), so each key would need its own validator and
message plus a translator of error locations: no fewer lines than the checks themselves.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

ABLATIONS = ("none", "cca", "cca_mem", "full")
GROUPINGS = ("probs", "logits")
METHODS = ("sup", "semi", "allspark")
# The method says whether the model has the AllSpark module: model.ablation is `none` for the baselines, and for
# AllSpark one of the Table 5 rows (full unless set). The model itself reads only model.ablation.
METHOD_ABLATION = {"sup": "none", "semi": "none", "allspark": "full"}
LAYOUTS = ("pascal", "cityscapes", "coco", "ade20k", "ade20k_prepared", "camvid", "folder", "synthetic")  # data.layout; see data.layouts
LABELED_LOSSES = ("ce", "ohem")
AMP_MODES = ("auto", "off", "bf16", "fp16")  # train.amp, `--amp` of eval, predict, suggest; see allspark.precision
OPTIMIZER_KERNELS = ("fused", "exact")  # train.optimizer_kernel: torch's fused kernel, or the releases' default one
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
MIN_CROP = 32  # the smallest crop or window MiT can encode: its first attention reduces 8x8 tokens at stride 4


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
    amp: str = "auto"  # auto (bf16 where the device runs it natively, else fp32) | off (fp32) | bf16 | fp16
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
    optimizer_kernel: str = "fused"  # fused: torch's one-kernel update, 2-3x faster | exact: the releases' kernel


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


@dataclass
class Config:
    method: str = "allspark"  # sup (SupBaseline) | semi (SemiBaseline) | allspark
    run_dir: str = "runs/default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)


def config_to_dict(cfg: Config) -> dict:
    """The Config as nested plain mappings: what config.yaml and the weights' metadata store."""
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
