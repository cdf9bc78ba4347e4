"""Paper Figure 6: how many channels Channel-wise Semantic Grouping assigns to each class."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from allspark.models.allspark import group_channels
from allspark.viz.features import bottleneck_of
from allspark.viz.figure import new_figure, save_figure


@torch.no_grad()
def grouping_counts(model: torch.nn.Module, images: Iterable[torch.Tensor], num_classes: int,
                    probs: bool = True) -> np.ndarray:
    """Channels assigned to each class, summed over normalised images (3, H, W): (K,) int64.

    As in training (METHODS.md 1.2) but with the model's eval-mode prediction as the teacher: the channels
    are the normalised c4 tokens after map_in, compared with the class maps on the token grid."""
    bottleneck = bottleneck_of(model)
    counts = np.zeros(num_classes, dtype=np.int64)
    for image in images:
        batch = image[None]  # (1, 3, H, W)
        c4 = model.encoder(batch)[-1]  # (1, C, h, w)
        tokens = bottleneck.attn_norm(bottleneck.map_in(c4).flatten(2).mT)  # (1, d, C)
        classes = group_channels(tokens, model(batch), c4.shape[-2:], probs=probs)  # (1, C)
        counts += np.bincount(classes.flatten().cpu().numpy(), minlength=num_classes)
    return counts


def plot_grouping(counts: np.ndarray, num_images: int, class_names: Sequence[str], out: str | Path,
                  size: tuple[int, int] = (1000, 500), title: str = "") -> Path:
    """Bar chart: average number of channels per image assigned to each class."""
    fig = new_figure(size)
    ax = fig.add_subplot()
    ticks = np.arange(len(counts))
    ax.bar(ticks, counts / max(num_images, 1), color="tab:green")
    ax.set_xticks(ticks, class_names, rotation=90 if len(counts) > 8 else 0, fontsize="small")
    ax.set_ylabel("channels per image")
    ax.set_title(title or f"Channel-wise Semantic Grouping over {num_images} unlabeled image(s)")
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, out)
