"""Confusion matrix and IoU (METHODS.md 3): accumulated with torch.bincount, reduced across ranks in one call."""
from __future__ import annotations

import torch

from allspark.config.schema import MIOU_OVER
from allspark.data.io import IGNORE_INDEX
from allspark.distributed import all_reduce_sum



class ConfusionMatrix:
    """K x K counts, rows = ground truth, columns = prediction; pixels labelled 255 are skipped.
    `miou_over` "present" averages IoU over the classes that occur, "all" over all K (absent = 0, the release)."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu", miou_over: str = "present"):
        if miou_over not in MIOU_OVER:
            raise ValueError(f"miou_over must be one of {', '.join(MIOU_OVER)}; got {miou_over!r}")
        self.num_classes = num_classes
        self.miou_over = miou_over
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: integer tensors of the same shape, e.g. (N, H, W)."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} does not match mask shape {tuple(target.shape)}")
        k = self.num_classes
        keep = target != IGNORE_INDEX
        gt = target[keep].long()
        if gt.numel() and int(gt.max()) >= k:
            raise ValueError(f"mask holds class {int(gt.max())} but the model has {k} classes (expected 0..{k - 1} or 255)")
        index = gt * k + pred[keep].long()
        self.matrix += torch.bincount(index, minlength=k * k).reshape(k, k)

    def reduce(self) -> None:
        """Sum the counts of every rank (one all_reduce)."""
        all_reduce_sum(self.matrix)

    def iou(self) -> torch.Tensor:
        """Per-class IoU (K,) as float64; NaN for classes absent from both ground truth and prediction."""
        m = self.matrix.double()
        inter = m.diag()
        union = m.sum(0) + m.sum(1) - inter
        return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))

    def miou(self) -> float:
        """Mean IoU over the classes that occur (in ground truth or prediction), or over all K with
        absent classes counting 0 when `miou_over` is "all"."""
        iou = self.iou()
        return float(iou.nan_to_num(0.0).mean() if self.miou_over == "all" else iou.nanmean())


def format_iou_table(iou: list[float], class_names: list[str], miou: float) -> str:
    """A two-column text table: class name, IoU in percent; mIoU last."""
    width = max([len(n) for n in class_names] + [4])
    lines = [f"{'class':<{width}}  IoU (%)", "-" * (width + 9)]
    lines += [f"{name:<{width}}  {value * 100:7.2f}" for name, value in zip(class_names, iou)]
    lines += ["-" * (width + 9), f"{'mIoU':<{width}}  {miou * 100:7.2f}"]
    return "\n".join(lines)
