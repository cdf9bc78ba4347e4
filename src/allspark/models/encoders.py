"""SegFormer's Mix Transformer (MiT-B0..B5) from `transformers`: sizes, config and the four stages."""
from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import SegformerConfig, SegformerModel
from transformers.modeling_layers import GradientCheckpointingLayer

# (stage widths, blocks per stage) of each size; heads, sr ratios and patch sizes are shared (METHODS.md 1).
MIT_SIZES = {
    "mit_b0": ((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": ((64, 128, 320, 512), (2, 2, 2, 2)),
    "mit_b2": ((64, 128, 320, 512), (3, 4, 6, 3)),
    "mit_b3": ((64, 128, 320, 512), (3, 4, 18, 3)),
    "mit_b4": ((64, 128, 320, 512), (3, 8, 27, 3)),
    "mit_b5": ((64, 128, 320, 512), (3, 6, 40, 3)),
}


def mit_config(name: str) -> SegformerConfig:
    """The SegformerConfig of MiT size `name` (mit_b0 .. mit_b5) as SegFormer trains it."""
    if name not in MIT_SIZES:
        raise ValueError(f"unknown encoder {name!r}; expected one of {', '.join(MIT_SIZES)}")
    widths, depths = MIT_SIZES[name]
    return SegformerConfig(
        num_encoder_blocks=4, hidden_sizes=list(widths), depths=list(depths), num_attention_heads=[1, 2, 5, 8],
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


class MiTEncoder(nn.Module):
    """The four MiT stages; returns c1..c4 at strides 4, 8, 16, 32. Parameter names are those of
    `SegformerModel` in transformers 5.x (`stages.N.blocks.M.attention.q_proj`, ...)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
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

    def checkpoint_blocks(self) -> None:
        """Recompute every transformer block in the backward pass instead of keeping its activations, through
        transformers' own switch on its layers; dropout and drop-path replay the same masks (RNG state kept)."""
        replay = functools.partial(checkpoint, use_reentrant=False)
        for module in self.stages.modules():
            if isinstance(module, GradientCheckpointingLayer):
                module.gradient_checkpointing, module._gradient_checkpointing_func = True, replay

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        x = images  # (N, 3, H, W)
        for stage in self.stages:
            x = stage(x)  # (N, C_i, H / s_i, W / s_i)
            feats.append(x)
        return feats
