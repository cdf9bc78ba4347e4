"""The encoders of the registry, each through transformers: SegFormer's Mix Transformer (MiT-B0..B5), the DINOv2,
DINOv2-with-registers and DINOv3 ViTs, and DINOv3's ConvNeXts. Each returns four feature maps (N, C_i, h_i, w_i)."""
from __future__ import annotations

import functools
import math

import torch
import transformers
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import SegformerConfig, SegformerModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings
from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import Dinov2WithRegistersEmbeddings

from allspark.registry import FAMILY_CLASSES, EncoderSpec, encoder_spec


def mit_config(name: str) -> SegformerConfig:
    """The SegformerConfig of MiT size `name` (mit_b0 .. mit_b5) as SegFormer trains it."""
    spec = encoder_spec(name)
    if spec.family != "mit":
        raise ValueError(f"{name} is not a MiT encoder")
    return SegformerConfig(
        num_encoder_blocks=4, **spec.hf, num_attention_heads=[1, 2, 5, 8],
        sr_ratios=[8, 4, 2, 1], patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2], mlp_ratios=[4, 4, 4, 4],
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.1, layer_norm_eps=1e-6,
    )


@torch.no_grad()
def mit_init(module: nn.Module) -> None:
    """The original MiT's random init, for training from scratch: Linear N(0, 0.02) truncated at +-2 (timm's
    absolute bounds) with zero bias, LayerNorm 1 / 0, Conv2d N(0, sqrt(2 / fan_out)) with fan_out = kh * kw *
    out / groups and zero bias. transformers gives every conv N(0, 0.02): about 24x too small for the
    depthwise 3x3 convs of the Mix-FFN, which made from-scratch training trail the release's."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def checkpoint_layers(module: nn.Module) -> None:
    """Recompute every transformer block of `module` in the backward pass instead of keeping its activations,
    through transformers' own switch on its layers; dropout and drop-path replay the same masks (RNG state kept)."""
    replay = functools.partial(checkpoint, use_reentrant=False)
    for layer in module.modules():
        if isinstance(layer, GradientCheckpointingLayer):
            layer.gradient_checkpointing, layer._gradient_checkpointing_func = True, replay


class MiTEncoder(nn.Module):
    """The four MiT stages; returns c1..c4 at strides 4, 8, 16, 32. Parameter names are those of
    `SegformerModel` in transformers 5.x (`stages.N.blocks.M.attention.q_proj`, ...)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.spec = encoder_spec(name)
        self.config = mit_config(name)
        self.stages = SegformerModel(self.config).stages
        self.channels = tuple(self.config.hidden_sizes)
        # The original MiT uses eps 1e-6 in its block and stage norms (transformers builds 1e-5).
        for stage in self.stages:
            stage.layer_norm.eps = self.config.layer_norm_eps
            for block in stage.blocks:
                block.layernorm_before.eps = self.config.layer_norm_eps
                block.layernorm_after.eps = self.config.layer_norm_eps
        self.stages.apply(mit_init)  # pretrained weights, when given, are loaded over these

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        x = images  # (N, 3, H, W)
        for stage in self.stages:
            x = stage(x)  # (N, C_i, H / s_i, W / s_i)
            feats.append(x)
        return feats


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


def backbone_class(family: str) -> type:
    """transformers' backbone class of an encoder family (registry.FAMILY_CLASSES)."""
    return getattr(transformers, FAMILY_CLASSES[family])


class ViTEncoder(nn.Module):
    """A DINOv2 / DINOv2-with-registers / DINOv3 ViT from transformers, giving the four maps of the registry's
    blocks, each through the final norm, at stride `patch` (UniMatch V2's get_intermediate_layers). The input
    must be whole patches (the segmenter resizes to them). Parameters are those of the backbone under `backbone.`."""

    def __init__(self, name: str, pos_embed: str = "release"):
        super().__init__()
        self.name, self.spec = name, encoder_spec(name)
        model_class = backbone_class(self.spec.family)
        config = model_class.config_class(**self.spec.hf, out_indices=[b + 1 for b in self.spec.blocks],
                                          apply_layernorm=True, reshape_hidden_states=True)
        self.backbone = model_class(config)
        if self.spec.family == "dinov2" and pos_embed == "release":
            self.backbone.embeddings.__class__ = ReleasePositionEmbeddings
        elif self.spec.family == "dinov2_reg":
            self.backbone.embeddings.__class__ = RegistersPositionEmbeddings
        # the masked-image token of DINO's pretraining is never read here: frozen, so DDP sees no unused parameter
        # (the release trains with find_unused_parameters and AdamW skips it as gradient-free: the same)
        self.backbone.embeddings.mask_token.requires_grad_(False)
        self.channels = self.spec.channels

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.backbone(images).feature_maps)  # 4 x (N, C, H / patch, W / patch)


class ConvNeXtEncoder(nn.Module):
    """A DINOv3 ConvNeXt from transformers: its four stages at strides 4, 8, 16, 32, under `backbone.`."""

    def __init__(self, name: str):
        super().__init__()
        self.name, self.spec = name, encoder_spec(name)
        model_class = backbone_class(self.spec.family)
        self.backbone = model_class(model_class.config_class(**self.spec.hf, out_indices=[1, 2, 3, 4]))
        self.channels = self.spec.channels

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.backbone(images).feature_maps)


def build_encoder(name: str, pos_embed: str = "release") -> nn.Module:
    """The encoder of registry name `name`, randomly initialised."""
    spec: EncoderSpec = encoder_spec(name)
    if spec.family == "mit":
        return MiTEncoder(name)
    if spec.is_vit:
        return ViTEncoder(name, pos_embed)
    return ConvNeXtEncoder(name)
