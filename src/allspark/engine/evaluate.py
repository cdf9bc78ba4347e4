"""Validation (METHODS.md 3): per-image probabilities from `predict_probs`, a confusion matrix over the
whole set (each image counted once across ranks), mIoU and per-class IoU."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from allspark import distributed as dist_utils
from allspark.config.loading import apply_overrides, config_from_dict, override_keys
from allspark.config.schema import Config, config_to_dict
from allspark.config.validation import check_data_root
from allspark.data.layouts import class_names_and_palette
from allspark.data.loaders import build_val_loader
from allspark.engine.memory_budget import check_inference, largest_images
from allspark.engine.metrics import ConfusionMatrix
from allspark.errors import ConfigError
from allspark.models.weights import load_model
from allspark.precision import autocast, resolve_amp
from allspark.predict.windows import center_crop_box, eval_window, predict_probs
from allspark.progress import progress_bar
from allspark.runs.atomic import atomic_write_text, ensure_writable
from allspark.runs.folder import RunFolder
from allspark.runs.metrics import json_safe
from allspark.runs.run_config import config_diff
from allspark.runs.weights_file import resolve_weights


SHOWN_SKIPPED = 3  # files a warning names before "and N more"
log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """One pass over a validation set: the confusion matrix, the images in it, and the (path, problem) of each
    sample `data.skip_bad_samples` left out, over every rank, sorted by path."""

    confusion: ConfusionMatrix
    images: int
    skipped: list[tuple[str, str]]


def skipped_line(skipped: Sequence[tuple[str, str]]) -> str:
    """One line naming the first few skipped validation files, with their problem, then how many more."""
    named = "; ".join(f"{path}: {problem}" for path, problem in skipped[:SHOWN_SKIPPED])
    more = f"; and {len(skipped) - SHOWN_SKIPPED} more" if len(skipped) > SHOWN_SKIPPED else ""
    return f"{len(skipped)} validation image(s) skipped (data.skip_bad_samples), not in the mIoU: {named}{more}"


@torch.no_grad()
def evaluate_set(model, loader, cfg: Config, device: torch.device, mode: str | None = None,
                 amp: str = "off", progress: bool = True) -> Evaluation:
    """The Evaluation of `model` (a module in eval mode) over `loader`, summed over ranks.
    `mode` defaults to `eval.mode`; `eval.window_placement` and `eval.miou_over` select ours or the release's
    behaviour. Batches are {'image': (N,3,H,W), 'mask': (N,H,W)} with ListDataset's "skipped" and "problem"."""
    mode = mode or cfg.eval.mode
    window = eval_window(cfg)
    confusion = ConfusionMatrix(cfg.model.num_classes, device, cfg.eval.miou_over)
    count, skipped = 0, []
    was_training = model.training
    model.eval()
    for batch in progress_bar(loader, desc=f"eval ({mode})", enabled=progress, leave=False):
        images = batch["image"].to(device, non_blocking=True)
        masks = batch["mask"].to(device, non_blocking=True)
        with autocast(device, amp):
            probs = predict_probs(model, images, mode, window, cfg.eval.stride_ratio,
                                  placement=cfg.eval.window_placement)  # (N, K, h, w)
        if mode == "center":
            top, left, bottom, right = center_crop_box(masks.shape[-2], masks.shape[-1], window)
            masks = masks[..., top:bottom, left:right]
        confusion.update(probs.argmax(1), masks)
        count += len(images)
        named = zip(batch.get("skipped", ()), batch.get("problem", ()))  # ListDataset's validation samples
        skipped += [(path, problem) for path, problem in named if path]
    model.train(was_training)
    confusion.reduce()
    shares = dist_utils.all_gather_object((count, skipped))
    skipped = sorted(item for _, share in shares for item in share)  # the same whatever the number of ranks
    return Evaluation(confusion, sum(share_count for share_count, _ in shares) - len(skipped), skipped)


def evaluate(model, loader, cfg: Config, device: torch.device, mode: str | None = None,
             amp: str = "off", progress: bool = True) -> ConfusionMatrix:
    """The confusion matrix of `evaluate_set`; skipped samples are logged in one warning line."""
    result = evaluate_set(model, loader, cfg, device, mode, amp, progress)
    if result.skipped:
        log.warning(skipped_line(result.skipped))
    return result.confusion


def run_evaluation(cfg: Config | None, checkpoint: str | Path, mode: str | None = None, out: str | Path | None = None,
                   device: str = "auto", overrides: Sequence[str] = (), amp: str = "auto", which: str = "best",
                   progress: bool = True, say: Callable[[str], None] = log.info) -> dict:
    """`allspark eval`: load weights, evaluate on `data.val_list` and write eval.json (in the checkpoint's run
    directory unless `out`, whose writability is checked first); returns eval.json's content with its path under
    "written" (rank 0) and, when samples were skipped, the line naming them under "warning". Works under torchrun
    (one share per rank; a caller's process group is left to it). With `cfg` None the config embedded in the
    weights is used, with `overrides` applied. `amp` (auto, off, bf16, fp16) is the forward passes' precision, as
    `train.amp`; rank 0 says which through `say` first and eval.json records it. `which` picks a run directory's
    checkpoint (best or latest); `progress` False: no progress bar."""
    with dist_utils.distributed(device) as info:
        precision = resolve_amp(amp, info.device, key="--amp")
        weights = resolve_weights(checkpoint, which)
        run = RunFolder(out) if out else (RunFolder.of_weights(weights) or RunFolder(weights.parent))
        # before the whole set is evaluated, not after; rank 0 checks, every rank stops if it fails
        dist_utils.on_main(info, lambda: ensure_writable(run.root))
        model, cfg = _model_and_config(weights, cfg, overrides, info.device)
        check_data_root(cfg)
        mode = mode or cfg.eval.mode
        loader = build_val_loader(cfg, info.rank, info.world_size)
        if info.is_main:  # once the inputs are known good: a refused one gets its single error line
            say(precision.line())
        dist_utils.on_main(info, lambda: _check_memory(cfg, loader.dataset, mode, info.device, precision.mode))
        done = evaluate_set(model, loader, cfg, info.device, mode, amp=precision.mode,
                            progress=progress and info.is_main)
        names, _ = class_names_and_palette(cfg)
        confusion = done.confusion
        result = {"mode": mode, "window_placement": cfg.eval.window_placement, "miou_over": cfg.eval.miou_over,
                  "miou": confusion.miou(), "iou": confusion.iou().tolist(), "class_names": names,
                  "confusion": confusion.matrix.tolist(), "checkpoint": str(weights), "amp": precision.mode,
                  "images": done.images, "skipped": [path for path, _ in done.skipped]}
        if info.is_main:
            atomic_write_text(run.eval_json, json.dumps({**result, "iou": json_safe(result["iou"])}, indent=1))
        return {**result, "written": run.eval_json if info.is_main else None,
                "warning": skipped_line(done.skipped) if done.skipped else None}


def _check_memory(cfg: Config, dataset, mode: str, device: torch.device, amp: str = "off") -> None:
    """MemoryBudgetError before evaluating when a window, or the largest validation image read whole, cannot fit."""
    if mode != "whole":
        window = eval_window(cfg)
        check_inference(cfg.model, device, 1, (window, window), f"evaluation ({mode}) of a window",
                        "lower eval.crop_size", amp)
        return
    sizes = largest_images(dataset.root / image for image, _ in dataset.entries[:64])
    if sizes:
        check_inference(cfg.model, device, 1, sizes[0], "whole-image evaluation of an image",
                        "evaluate with --mode sliding (windows of eval.crop_size)", amp)


def _model_and_config(weights: Path, cfg: Config | None, overrides: Sequence[str], device: torch.device):
    """(model in eval mode on `device`, the config to evaluate with): `cfg`, or the weights' own config with
    `overrides` applied; a model config other than the one the weights were trained with is refused."""
    model, saved_cfg = load_model(weights, device=device)  # the file holds every weight: model.pretrained is not read
    if cfg is None:
        cfg = config_from_dict(apply_overrides(config_to_dict(saved_cfg), overrides),
                               where=f"{weights} (embedded config)", command_line=override_keys(overrides))
    differing = [line for line in config_diff(saved_cfg, cfg) if line.startswith("model.")]
    if differing:
        raise ConfigError(f"{weights} was trained with another model config (checkpoint -> given): "
                          f"{'; '.join(differing)}; evaluate with the run's config.yaml")
    return model, cfg
