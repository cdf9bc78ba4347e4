"""The two ways `allspark pretrain` teaches an encoder, each an nn.Module holding the encoder (`.encoder`, what the
run saves) and its small head (`.head`, thrown away): masked image modelling and feature distillation."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from allspark.encoders.base import Encoder


class MaskedImageModel(nn.Module):
    """SimMIM (Xie et al. 2022, arXiv 2111.09886): the encoder sees the image with the masked blocks replaced by a
    learned value; a one-layer head (1x1 conv to stride^2 * 3 channels + pixel shuffle) predicts every pixel from
    the last map; the loss is L1 on the masked pixels of the normalised image (mean over them, SimMIM's).

    One difference, so one module serves every family: SimMIM puts its learned mask token after the patch
    embedding, which differs per family (a ViT's patches, MiT's overlapping 7x7 convs, ConvNeXt's stem); here the
    learned value (one per colour channel) goes into the pixels, before any family's own embedding. For a ViT
    whose mask blocks cover whole patches this is a learned token confined to what the embedding makes of a
    constant patch."""

    def __init__(self, encoder: Encoder, stride: int):
        super().__init__()
        self.encoder = encoder
        self.mask_value = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.head = nn.Sequential(nn.Conv2d(encoder.channels[-1], stride * stride * 3, kernel_size=1),
                                  nn.PixelShuffle(stride))

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) normalised, masks (N, H, W) bool (True: masked) -> the scalar loss (float32)."""
        hidden = masks[:, None].to(images.dtype)  # (N, 1, H, W)
        seen = images * (1 - hidden) + self.mask_value.to(images.dtype) * hidden
        recon = self.head(self.encoder(seen)[-1])  # (N, 3, h * stride, w * stride): >= H x W
        recon = recon[..., : images.shape[-2], : images.shape[-1]].float()
        error = (recon - images.float()).abs() * hidden
        return error.sum() / (hidden.sum() * 3).clamp(min=1)


class FeatureDistiller(nn.Module):
    """Feature regression on the teacher's last map: the student's last map through a 1x1 conv to the teacher's
    width, against the teacher's map resized (bilinear) to the student's grid and whitened per position by a
    layer norm without weights (Wei et al. 2022, arXiv 2205.14141, feature distillation), mean squared error."""

    def __init__(self, encoder: Encoder, teacher_channels: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Conv2d(encoder.channels[-1], teacher_channels, kernel_size=1)

    def forward(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W), target (N, C_t, h_t, w_t) the teacher's last map -> the scalar loss (float32)."""
        predicted = self.head(self.encoder(images)[-1]).float()  # (N, C_t, h, w)
        target = F.interpolate(target.float(), size=predicted.shape[-2:], mode="bilinear", align_corners=False)
        target = F.layer_norm(target.permute(0, 2, 3, 1), target.shape[1:2]).permute(0, 3, 1, 2)
        return F.mse_loss(predicted, target)
