"""SimMIM's random masking (Xie et al. 2022, arXiv 2111.09886): square blocks of `unit` pixels, a fixed share of
them masked in every image, drawn from a generator seeded by the step so that a resumed run draws the same masks."""
from __future__ import annotations

import torch

MASK_RATIO = 0.6  # SimMIM's default for its 32-pixel mask blocks (their Table 1: 0.4-0.8 within 0.3 points)
MASK_BLOCK = 32  # SimMIM's mask patch size in pixels


def mask_unit(stride: int, block: int = MASK_BLOCK) -> int:
    """The mask block in pixels: `block` rounded to a whole number (at least one) of the encoder's last stride, so a
    masked block covers whole tokens of the last map (28 for a patch-14 ViT, 32 for MiT and ConvNeXt)."""
    return stride * max(1, round(block / stride))


def block_masks(count: int, side: int, unit: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """(count, side, side) bool pixel masks, True where masked: of the ceil(side / unit)^2 blocks of each image,
    round(ratio * blocks) chosen uniformly without replacement."""
    grid = -(-side // unit)
    blocks = grid * grid
    masked = round(ratio * blocks)
    order = torch.rand(count, blocks, generator=generator).argsort(dim=1)
    chosen = torch.zeros(count, blocks, dtype=torch.bool)
    chosen.scatter_(1, order[:, :masked], True)
    pixels = chosen.view(count, grid, grid).repeat_interleave(unit, 1).repeat_interleave(unit, 2)
    return pixels[:, :side, :side]
