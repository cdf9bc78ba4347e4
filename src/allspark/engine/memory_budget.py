"""Memory before it runs out (issue 32.3): the peak of a training step or of one inference piece, traced on fake
tensors (shapes and no storage, so nothing is allocated whatever the crop), compared with the memory free before
the first step. Calibration against measured CPU peaks: BENCHMARKS.md, "Memory estimate"."""
from __future__ import annotations

import dataclasses
import math
import os
import weakref
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from allspark.config.schema import Config, ModelConfig
from allspark.encoders.base import checkpoint_layers
from allspark.errors import ConfigError, MemoryBudgetError
from allspark.models import build_model
from allspark.precision import autocast, resolve_amp

AVAILABLE_ENV = "ALLSPARK_MEMORY_AVAILABLE"  # bytes (or 200M, 2G) read as free memory instead of the machine's
MARGIN = 1.25  # the traced peak times this: what the trace leaves out (allocator slack, the loss's temporaries)
UNITS = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of the storages the traced ops create while they are alive, and their peak."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._count(tensor.untyped_storage())
        return out

    def _count(self, storage) -> None:
        key = storage._cdata
        if key in self._seen:  # a view of a storage already counted
            return
        self._seen.add(key)
        size = storage.nbytes()
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self._seen.discard(key)
        self.live -= size


def _fake_model(mcfg: ModelConfig, fake: FakeTensorMode, checkpointing: bool = False):
    """The segmenter of `mcfg` made of `fake`'s tensors (shapes, no storage), its pretrained weights not read."""
    with torch.device("meta"):  # built where initialisation draws nothing, then given fake CPU tensors
        model = build_model(dataclasses.replace(mcfg, pretrained=None))
    with fake:
        model.to_empty(device="cpu")
    if checkpointing:
        checkpoint_layers(model.encoder)
    return model


class Trace(NamedTuple):
    """What a traced pass needs: its peak (activations, and gradients when training) and the model's weights."""

    peak: int  # bytes of the tensors the pass creates, at their most (the weights themselves not counted)
    weights: int  # bytes of all parameters and buffers, fp32
    trainable: int  # bytes of the parameters that get gradients (and optimizer state)


def trace(mcfg: ModelConfig, images: int, size: tuple[int, int], train: bool, amp: str = "off",
          checkpointing: bool = False) -> Trace:
    """`model(x)` on `images` images of `size` under `amp`'s autocast (train: in train mode, then its backward)."""
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    model = _fake_model(mcfg, fake, checkpointing).train(train)
    with fake:
        x = torch.empty(images, 3, *size)
    with fake, torch.set_grad_enabled(train), autocast(torch.device("cpu"), amp), _LiveBytes() as counter:
        logits = model(x)
        if train:
            logits.float().sum().backward()
    weights = sum(t.numel() * 4 for t in [*model.parameters(), *model.buffers()])
    return Trace(counter.peak, weights, sum(p.numel() * 4 for p in model.parameters() if p.requires_grad))


def training_step_bytes(cfg: Config, device: torch.device = torch.device("cpu")) -> int:
    """Peak bytes of one training step on `device` in the run's precision (a run resolves `auto` before): the
    student's pass over a micro-batch (labeled and unlabeled views) and its backward, its logits' loss terms, the
    teacher's logits, plus weights, optimizer state and an EMA teacher."""
    t, crop, classes = cfg.train, cfg.model.crop_size, cfg.model.num_classes
    amp = resolve_amp(t.amp, device).mode
    unlabeled = 0 if cfg.method == "sup" else cfg.recipe.views * t.batch_size
    images = math.ceil((t.batch_size + unlabeled) / t.accumulate)
    step = trace(cfg.model, images, (crop, crop), True, amp, t.activation_checkpointing)
    logits = (2 * images + 2 * math.ceil(unlabeled / t.accumulate)) * classes * crop * crop * 4  # loss, teacher
    slots = 2 if t.optimizer == "adamw" else 1
    state = step.weights + slots * step.trainable + (step.weights if cfg.recipe.teacher == "ema" else 0)
    return int(MARGIN * (step.peak + logits)) + state


def inference_bytes(mcfg: ModelConfig, images: int, size: tuple[int, int], amp: str = "off") -> int:
    """Peak bytes of predicting `images` pieces of `size` under `amp` without gradients: the pass and its
    probabilities (fp32)."""
    probs = 3 * images * mcfg.num_classes * size[0] * size[1] * 4  # softmax, the running sum, the result
    return int(MARGIN * (trace(mcfg, images, size, False, amp).peak + probs))


def _size_bytes(text: str) -> int:
    """`2G`, `200M`, `512K` or a plain number of bytes."""
    text = text.strip().upper().removesuffix("B")
    scale = UNITS.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def size_text(size: int) -> str:
    """Bytes as `9.3 GB` or `12 MB`."""
    return f"{size / 10**9:.1f} GB" if size >= 10**9 else f"{max(1, round(size / 10**6))} MB"


def _read_int(path: str, field: str | None = None) -> int | None:
    """An integer file (a cgroup limit; `max` is None) or a `field:` line of /proc/meminfo, in bytes."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    if field is None:
        return int(text) if text.strip().isdigit() else None
    line = next((line for line in text.splitlines() if line.startswith(field + ":")), None)
    return int(line.split()[1]) * 1024 if line else None


def available_bytes(device: torch.device) -> int | None:
    """Memory free for a step on `device` (None: unknown): the GPU's free memory, or MemAvailable within the
    cgroup's limit, shared by the processes of this machine; ALLSPARK_MEMORY_AVAILABLE overrides it."""
    if os.environ.get(AVAILABLE_ENV):
        try:
            return _size_bytes(os.environ[AVAILABLE_ENV])
        except ValueError:
            raise ConfigError(f"{AVAILABLE_ENV} must be a size such as 2G, 500M or a number of bytes; got "
                              f"{os.environ[AVAILABLE_ENV]!r}") from None
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    free = [_read_int("/proc/meminfo", "MemAvailable")]
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        free.append(limit - used)
    free = [value for value in free if value is not None]
    return min(free) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if free else None


def check_training(cfg: Config, device: torch.device) -> str:
    """The line saying what a step needs and what is free; MemoryBudgetError, naming the keys to lower, when the
    step cannot fit."""
    try:
        need, free = training_step_bytes(cfg, device), available_bytes(device)
    except RuntimeError as err:  # a shape the traced kernels refuse: the step itself will say what is wrong
        return f"memory estimate skipped: {str(err).splitlines()[0]}"
    t = cfg.train
    at = f"model.crop_size={cfg.model.crop_size}, train.batch_size={t.batch_size}"
    if free is None:
        return f"a training step needs ~{size_text(need)} at {at} (free memory unknown)"
    if need <= free:
        return f"a training step needs ~{size_text(need)} at {at} ({size_text(free)} free)"
    others = [key for key, unset in (("train.amp=bf16", t.amp == "off"), ("train.activation_checkpointing=true",
              not t.activation_checkpointing), ("train.accumulate=2", t.batch_size > 1 and t.accumulate == 1)) if unset]
    also = f" (or {', '.join(others)})" if others else ""
    raise MemoryBudgetError(f"a training step needs ~{size_text(need)} at {at} ({size_text(free)} free on "
                            f"{device.type}): lower model.crop_size or train.batch_size{also}",
                            "model.crop_size", "train.batch_size")


def check_inference(mcfg: ModelConfig, device: torch.device, images: int, size: tuple[int, int], what: str,
                    lower: str, amp: str = "off") -> None:
    """MemoryBudgetError when predicting `images` pieces of `size` under `amp` cannot fit: `what` names the piece,
    `lower` the options that make it smaller."""
    free = available_bytes(device)
    if free is None:
        return
    try:
        need = inference_bytes(mcfg, images, size, amp)
    except RuntimeError:  # a shape the traced kernels refuse: the prediction itself will say what is wrong
        return
    if need > free:
        raise MemoryBudgetError(f"{what} of {size[1]}x{size[0]} px needs ~{size_text(need)} ({size_text(free)} "
                                f"free on {device.type}): {lower}")


def largest_images(paths, count: int = 64) -> list[tuple[int, int]]:
    """(height, width) of the first `count` of `paths` read from their headers (unreadable ones left to the data
    checks), largest first."""
    sizes = []
    for path in list(paths)[:count]:
        try:
            with Image.open(path) as image:
                sizes.append((image.height, image.width))
        except OSError:
            continue
    return sorted(sizes, key=lambda size: size[0] * size[1], reverse=True)


def crop_note(crop: int, sizes: list[tuple[int, int]]) -> str | None:
    """A warning when the training crop is larger than every image read: crops are padded, which costs memory."""
    if not sizes or any(max(size) >= crop for size in sizes):
        return None
    tallest, widest = max(h for h, _ in sizes), max(w for _, w in sizes)
    return (f"model.crop_size={crop} is larger than every training image read (the first {len(sizes)}, at most "
            f"{widest}x{tallest} px): each crop is mostly padding, which costs memory and time; a crop no larger "
            "than the images is usual")
