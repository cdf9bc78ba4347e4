"""DINOv2 and DINOv2-with-registers through transformers, with the position-table resizes the weights were trained
with, and the original release's key names (`dinov2_vits14_pretrain.pth`, UniMatch V2's `backbone.*`)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Dinov2Backbone, Dinov2WithRegistersBackbone
from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings
from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import Dinov2WithRegistersEmbeddings

from allspark.encoders.base import ViTEncoder

# Original DINOv2 names (Meta's release, UniMatch V2's `backbone.*`) -> transformers' Dinov2 / Dinov2WithRegisters;
# the stacked qkv splits into q, k, v, the giant's SwiGLU `w12` into gate and up.
DINOV2_KEYS = [
    (r"(?P<m>cls_token|mask_token|register_tokens)", "embeddings.{m}"),
    (r"pos_embed", "embeddings.position_embeddings"),
    (r"patch_embed\.proj\.(?P<p>weight|bias)", "embeddings.patch_embeddings.projection.{p}"),
    (r"blocks\.(?P<j>\d+)\.(?P<m>norm1|norm2)\.(?P<p>weight|bias)", "encoder.layer.{j}.{m}.{p}"),
    (r"blocks\.(?P<j>\d+)\.attn\.qkv\.(?P<p>weight|bias)", "encoder.layer.{j}.attention.{part}_proj.{p}", ("q", "k", "v")),
    (r"blocks\.(?P<j>\d+)\.attn\.proj\.(?P<p>weight|bias)", "encoder.layer.{j}.attention.o_proj.{p}"),
    (r"blocks\.(?P<j>\d+)\.ls(?P<i>[12])\.gamma", "encoder.layer.{j}.layer_scale{i}.lambda1"),
    (r"blocks\.(?P<j>\d+)\.mlp\.(?P<m>fc1|fc2)\.(?P<p>weight|bias)", "encoder.layer.{j}.mlp.{m}.{p}"),
    (r"blocks\.(?P<j>\d+)\.mlp\.w12\.(?P<p>weight|bias)", "encoder.layer.{j}.mlp.{part}_proj.{p}", ("gate", "up")),
    (r"blocks\.(?P<j>\d+)\.mlp\.w3\.(?P<p>weight|bias)", "encoder.layer.{j}.mlp.down_proj.{p}"),
    (r"norm\.(?P<p>weight|bias)", "layernorm.{p}"),
]


def _bicubic_matrix(out: int, size: int, scale: float, like: torch.Tensor) -> torch.Tensor:
    """(out, size) weights of PyTorch's bicubic resize (A = -0.75, half-pixel centres, edge indices clamped) along
    one axis by the factor `scale`: `F.interpolate(scale_factor=...)` as a matrix, because the exporter fixes a
    scale factor read from the input size to its example's value, while these ops follow the size."""
    a = -0.75
    source = (torch.arange(out, dtype=like.dtype, device=like.device) + 0.5) / scale - 0.5
    start = source.floor()
    t = source - start
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # noqa: E731  |x| <= 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # noqa: E731  1 < |x| < 2
    weights = torch.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], dim=1)  # (out, 4)
    taps = (start.long()[:, None] + torch.arange(-1, 3, device=like.device)).clamp(0, size - 1)  # (out, 4)
    return (weights[:, :, None] * F.one_hot(taps, size).to(like.dtype)).sum(1)


def _position_table(module: nn.Module, tokens: torch.Tensor, height: int, width: int, resize) -> torch.Tensor:
    """`module`'s position table for a height x width input: as stored for its own square grid, else with the patch
    part resized by resize(grid (side, side, C) float32, rows, cols) -> (rows, cols, C)."""
    table = module.position_embeddings
    positions = table.shape[1] - 1
    if tokens.shape[1] - 1 == positions and height == width and not torch.compiler.is_exporting():
        return table
    side = int(math.sqrt(positions))
    patch = module.patch_embeddings.patch_size[0]
    rows, cols = height // patch, width // patch
    grid = resize(table[:, 1:].float().reshape(side, side, -1), rows, cols)
    return torch.cat([table[:, :1], grid.reshape(1, rows * cols, -1).to(table.dtype)], dim=1)


class ReleasePositionEmbeddings(Dinov2Embeddings):
    """DINOv2's embeddings with the position table resized as the DINOv2 release does (and UniMatch V2 with it):
    bicubic by the factor (grid + 0.1) / side of the table rather than to the exact grid, which moves every value
    on any grid but the table's own (METHODS.md 10). The weights were trained this way, so it is the default
    (model.pos_embed)."""

    OFFSET = 0.1

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        def resize(grid, rows, cols):  # grid (37, 37, C) -> (rows, cols, C)
            side = grid.shape[0]
            along_h = _bicubic_matrix(rows, side, (rows + self.OFFSET) / side, grid)  # (rows, 37)
            along_w = _bicubic_matrix(cols, side, (cols + self.OFFSET) / side, grid)  # (cols, 37)
            return torch.einsum("hi,ijc,wj->hwc", along_h, grid, along_w)
        return _position_table(self, embeddings, height, width, resize)


class RegistersPositionEmbeddings(Dinov2WithRegistersEmbeddings):
    """transformers' DINOv2-with-registers embeddings, resizing the position table as they do (bicubic to the exact
    grid, antialiased), but from the symbolic grid size: theirs casts it to a Python int, which fixes an exported
    graph to its example's grid."""

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        def resize(grid, rows, cols):
            grid = F.interpolate(grid.permute(2, 0, 1)[None], size=(rows, cols), mode="bicubic", align_corners=False,
                                 antialias=True)
            return grid[0].permute(1, 2, 0)
        return _position_table(self, embeddings, height, width, resize)


class DINOv2Encoder(ViTEncoder):
    """DINOv2 (Meta's release, UniMatch V2's encoder); model.pos_embed picks how its position table resizes."""

    family = "dinov2"
    transformers_class = Dinov2Backbone
    original_keys = DINOV2_KEYS
    registers = False  # the original files of the two DINOv2 families differ by their register tokens

    @classmethod
    def holds_original(cls, keys) -> bool:
        return super().holds_original(keys) and ("register_tokens" in keys) == cls.registers

    def embeddings_class(self, pos_embed: str) -> type | None:
        return ReleasePositionEmbeddings if pos_embed == "release" else None


class DINOv2RegistersEncoder(DINOv2Encoder):
    """DINOv2 with registers: the position table resizes as transformers does, from the symbolic grid."""

    family = "dinov2_reg"
    transformers_class = Dinov2WithRegistersBackbone
    registers = True

    def embeddings_class(self, pos_embed: str) -> type | None:
        return RegistersPositionEmbeddings
