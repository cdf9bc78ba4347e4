"""Training losses of METHODS.md 2: CE with ignore 255, OHEM for Cityscapes, pseudo-label CE on unlabeled crops."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from allspark.data.io import IGNORE_INDEX  # the masks' ignore value, defined once by the data layer


def ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over pixels whose target is not 255; logits (B, K, H, W), target (B, H, W)."""
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)


def ohem_mask(probs_gt: torch.Tensor, valid: torch.Tensor, thresh: float, min_kept: int) -> torch.Tensor:
    """Pixels kept by OHEM: ground-truth-class probability below `thresh`, raised so that at least
    `min_kept` valid pixels are kept (the hardest ones); probs_gt and valid are (N,)."""
    num_valid = int(valid.sum())
    if num_valid == 0:
        return valid
    threshold = torch.tensor(thresh, device=probs_gt.device, dtype=probs_gt.dtype)
    if min_kept > 0:
        kth = min(min_kept, num_valid)
        hardest = torch.kthvalue(probs_gt[valid], kth).values  # the kth-smallest GT probability
        threshold = torch.maximum(threshold, hardest)
    return valid & (probs_gt <= threshold) if min_kept > 0 else valid & (probs_gt < threshold)


def ohem_loss(logits: torch.Tensor, target: torch.Tensor, thresh: float = 0.7, min_kept: int = 200000) -> torch.Tensor:
    """Online hard example mining CE (METHODS.md 2, Cityscapes labeled term): mean CE over the kept pixels."""
    logits = logits.float()
    pixel_loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none").flatten()  # (B*H*W,)
    valid = (target != IGNORE_INDEX).flatten()
    with torch.no_grad():
        safe_target = target.clamp(max=logits.shape[1] - 1).flatten()
        probs = logits.softmax(1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1])  # (B*H*W, K)
        probs_gt = probs.gather(1, safe_target[:, None]).squeeze(1)
        keep = ohem_mask(probs_gt, valid, thresh, min_kept)
    return (pixel_loss * keep).sum() / keep.sum().clamp(min=1)


def unlabeled_loss(logits: torch.Tensor, pseudo: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """CE against teacher pseudo-labels (B, H, W), excluding padded pixels where `valid` is False (METHODS.md 5)."""
    target = pseudo.masked_fill(~valid, IGNORE_INDEX)
    return ce_loss(logits, target)


def labeled_loss(logits: torch.Tensor, target: torch.Tensor, kind: str, thresh: float, min_kept: int) -> torch.Tensor:
    """The labeled term chosen by `train.labeled_loss`: plain CE or OHEM."""
    if kind == "ohem":
        return ohem_loss(logits, target, thresh, min_kept)
    return ce_loss(logits, target)
