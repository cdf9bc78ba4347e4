"""UniMatch V2's DPT head (METHODS.md 7): four ViT maps at one stride -> 1x1 projections -> resized to 4x, 2x,
1x and 1/2 of the patch grid -> 3x3 convs to `features` -> four fusion blocks from the deepest up -> output
convs, at 8x the patch grid. The segmenter resizes the logits to the input."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ResidualUnit(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3x3 convs with bias, no normalisation (the release's use_bn=False)."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """Adds the refined skip map to the path from below (all but the deepest block have one), refines the sum,
    resizes it (to `size`, or 2x) bilinearly with aligned corners, then mixes channels with a 1x1 conv."""

    def __init__(self, features: int, has_skip: bool = True):
        super().__init__()
        # the release builds a skip unit in the deepest block too and never calls it; leaving it out keeps DDP
        # free of unused parameters (its converter reports those weights as dropped)
        self.skip_unit = ResidualUnit(features) if has_skip else None
        self.path_unit = ResidualUnit(features)
        self.project = nn.Conv2d(features, features, kernel_size=1)

    def forward(self, path: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        if self.skip_unit is not None:
            path = path + self.skip_unit(skip)
        path = self.path_unit(path)
        resize = {"size": tuple(size)} if size is not None else {"scale_factor": 2}
        path = F.interpolate(path, **resize, mode="bilinear", align_corners=True)
        return self.project(path)


class DPTHead(nn.Module):
    """`features` wide fusion over `out_channels` projections of four (N, C, h, w) maps; returns (N, K, 8h, 8w)."""

    def __init__(self, in_channels: int, num_classes: int, features: int, out_channels: Sequence[int]):
        super().__init__()
        self.projects = nn.ModuleList(nn.Conv2d(in_channels, width, kernel_size=1) for width in out_channels)
        up4, up2, same, down2 = out_channels
        self.resizes = nn.ModuleList([
            nn.ConvTranspose2d(up4, up4, kernel_size=4, stride=4),
            nn.ConvTranspose2d(up2, up2, kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(down2, down2, kernel_size=3, stride=2, padding=1),
        ])
        self.refines = nn.ModuleList(nn.Conv2d(width, features, kernel_size=3, padding=1, bias=False)
                                     for width in out_channels)
        self.fusions = nn.ModuleList(FusionBlock(features, has_skip=level < 3) for level in range(4))  # [i]: level i
        self.out_conv = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.classifier = nn.Conv2d(features, num_classes, kernel_size=1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        levels = [refine(resize(project(feat)))
                  for feat, project, resize, refine in zip(feats, self.projects, self.resizes, self.refines)]
        path = self.fusions[3](levels[3], size=levels[2].shape[-2:])  # 4h -> 2h -> h -> h/2, fused from h/2 up
        path = self.fusions[2](path, levels[2], size=levels[1].shape[-2:])
        path = self.fusions[1](path, levels[1], size=levels[0].shape[-2:])
        path = self.fusions[0](path, levels[0])  # (N, F, 8h, 8w)
        return self.classifier(F.relu(self.out_conv(path)))
