"""The recipes beyond the paper's loop (config section `recipe`): CutMix of the student's view, a confidence
threshold on the pseudo-labels, an EMA teacher. With the defaults every function here returns its input or the
paper's loss unchanged, so the default run is the paper's loop bit for bit.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from allspark.data.io import IGNORE_INDEX
from allspark.engine.losses import unlabeled_loss
from allspark.models.allspark import SemanticMemory


def cutmix(x: torch.Tensor, box: torch.Tensor, partner: str = "roll") -> torch.Tensor:
    """x (B, ..., H, W) with the pixels of sample i inside box[i] (B, H, W) taken from its partner: sample
    (i + 1) % B for "roll", sample B - 1 - i for "flip" (UniMatch V2's mirrored batch; the middle one of an odd
    batch is its own partner there)."""
    mask = box.view(box.shape[0], *([1] * (x.dim() - 3)), *box.shape[1:])
    return torch.where(mask, x.roll(-1, 0) if partner == "roll" else x.flip(0), x)


VIEW_KEYS = (("strong", "box"), ("strong2", "box2"))  # the batch keys of the student's first and second view


def student_views(batch_u: dict, teacher_logits: torch.Tensor, views: int = 1, partner: str = "roll"
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, teacher logits, valid) the student learns from, the `views` views of the batch one after the other
    along the batch dimension: each the view's strong image if the batch has one, else the teacher's own (weak)
    view; with CutMix boxes, the images, the teacher's logits (so pseudo-labels, confidence and the grouping's
    probabilities) and the padding mask are all mixed by that view's boxes, pixel for pixel."""
    parts = []
    for image_key, box_key in VIEW_KEYS[:views]:
        images, logits, valid = batch_u.get(image_key, batch_u["image"]), teacher_logits, batch_u["valid"]
        if box_key in batch_u:
            box = batch_u[box_key]
            images, logits, valid = (cutmix(images, box, partner), cutmix(logits, box, partner),
                                     cutmix(valid, box, partner))
        parts.append((images, logits, valid))
    return parts[0] if views == 1 else tuple(torch.cat(items) for items in zip(*parts))


def complementary_masks(pairs: int, channels: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(2 * pairs, channels) channel masks of UniMatch V2's complementary dropout, rows i and pairs + i for the two
    views of image i: half of the images (rounded down, chosen at random) keep both views whole (1/1); for the
    others each channel is 2 in one view and 0 in the other (a fair coin per channel), so their two views see
    disjoint halves of the features, scaled to keep the expectation."""
    first = torch.bernoulli(torch.full((pairs, channels), 0.5), generator=generator) * 2.0
    kept = torch.randperm(pairs, generator=generator)[:pairs // 2]
    first[kept] = 1.0
    return torch.cat([first, 2.0 - first])


def rampup_factor(iteration: int, rampup_iters: int) -> float:
    """The share of the unlabeled weight at step `iteration` (0-based): exp(-5 (1 - t)^2) with t = iteration /
    rampup_iters, then 1 (the sigmoid-shaped ramp-up of Mean Teacher); 1 throughout when rampup_iters is 0.
    It keeps a from-scratch teacher's first guesses from weighing as much as the labels."""
    if iteration >= rampup_iters:
        return 1.0
    return math.exp(-5.0 * (1.0 - iteration / rampup_iters) ** 2)


def pseudo_label_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, valid: torch.Tensor,
                      threshold: float) -> torch.Tensor:
    """CE of the student's logits (B, K, H, W) against the teacher's argmax, on valid (unpadded) pixels.
    threshold > 0: pixels where the teacher's top probability is below it add nothing, and the sum is still
    divided by all valid pixels, so the term shrinks as the teacher's confidence does; 0: the paper's loss."""
    pseudo = teacher_logits.argmax(1)  # (B, H, W)
    if threshold == 0:
        return unlabeled_loss(logits, pseudo, valid)
    confident = is_confident(teacher_logits, threshold)  # (B, H, W)
    target = pseudo.masked_fill(~valid, IGNORE_INDEX)
    pixels = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none")
    return (pixels * confident).sum() / valid.sum().clamp(min=1)


def is_confident(teacher_logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, H, W) bool: the teacher's top probability reaches `threshold`."""
    return teacher_logits.float().softmax(1).amax(1) >= threshold


@torch.no_grad()
def confident_share(teacher_logits: torch.Tensor, valid: torch.Tensor, threshold: float) -> torch.Tensor:
    """The share of valid (unpadded) pixels whose teacher confidence reaches `threshold`: how much of the unlabeled
    term teaches at all (UniMatch's mask ratio); 1 without a threshold. A 0-dim float tensor."""
    return (is_confident(teacher_logits, threshold) & valid).sum() / valid.sum().clamp(min=1)


class EmaTeacher:
    """A copy of the student, in eval mode, whose parameters and BatchNorm statistics follow the student's as an
    exponential moving average (recipe.teacher=ema). Its Semantic Memory, pointers and BatchNorm counters are
    never read (the teacher predicts image by image, METHODS.md 1.3) and stay as copied."""

    def __init__(self, student: nn.Module, momentum: float):
        self.momentum = momentum
        self.model = copy.deepcopy(student).eval().requires_grad_(False)
        self.names = _averaged_names(student)
        self._own = self._tensors(self.model)

    def _tensors(self, model: nn.Module) -> list[torch.Tensor]:
        state = model.state_dict(keep_vars=True)
        return [state[name].detach() for name in self.names]

    def momentum_at(self, iteration: int) -> float:
        """The momentum of the update after step `iteration` (0-based): min(m, i / (i + 1)), so the teacher is
        the plain mean of the student's states so far until that mean moves slower than the EMA would."""
        return min(self.momentum, iteration / (iteration + 1))

    @torch.no_grad()
    def update(self, student: nn.Module, iteration: int) -> None:
        """teacher = m * teacher + (1 - m) * student, tensor by tensor, after the optimiser's step `iteration`."""
        m = self.momentum_at(iteration)
        torch._foreach_mul_(self._own, m)
        torch._foreach_add_(self._own, self._tensors(student), alpha=1 - m)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged tensors, for the training state of a checkpoint."""
        return {name: tensor.clone() for name, tensor in zip(self.names, self._own)}

    @torch.no_grad()
    def load_state_dict(self, student: nn.Module, state: dict[str, torch.Tensor] | None) -> None:
        """Restart from a copy of `student` (the resumed weights), then take the averaged tensors of `state`
        when the checkpoint has them (a run switched to an EMA teacher on resume starts from the student)."""
        self.model.load_state_dict(student.state_dict())
        if state is not None:
            for name, tensor in zip(self.names, self._own):
                tensor.copy_(state[name])


def _averaged_names(model: nn.Module) -> list[str]:
    """State-dict names of the parameters and floating-point buffers, less the Semantic Memory's."""
    memory = {f"{prefix}.{name}" if prefix else name for prefix, module in model.named_modules()
              if isinstance(module, SemanticMemory) for name, _ in module.named_buffers()}
    names = [name for name, _ in model.named_parameters()]
    return names + [name for name, b in model.named_buffers() if b.is_floating_point() and name not in memory]
