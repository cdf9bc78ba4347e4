"""SegFormer's Mix Transformer (MiT-B0..B5) through transformers' SegformerModel: its config, the original MiT's
random init, and the original release's key names (`mit_bX.pth`, the AllSpark release's `backbone.*`)."""
from __future__ import annotations

import math

import torch
from torch import nn
from transformers import SegformerConfig, SegformerModel

from allspark.encoders.attention import use_attention
from allspark.encoders.base import Encoder
from allspark.encoders.specs import EncoderSpec

# Original MiT name -> installed transformers name; {s} is the stage index (the digit n minus 1). A rule with a
# third element splits a stacked Linear along its rows into equal parts, each named by filling {part}: MiT's
# `kv` into k_proj (first C rows) and v_proj (next C rows).
MIT_KEYS = [
    (r"patch_embed(?P<n>[1-4])\.proj\.(?P<p>weight|bias)", "stages.{s}.patch_embeddings.proj.{p}"),
    (r"patch_embed(?P<n>[1-4])\.norm\.(?P<p>weight|bias)", "stages.{s}.patch_embeddings.layer_norm.{p}"),
    (r"block(?P<n>[1-4])\.(?P<j>\d+)\.norm1\.(?P<p>weight|bias)", "stages.{s}.blocks.{j}.layernorm_before.{p}"),
    (r"block(?P<n>[1-4])\.(?P<j>\d+)\.norm2\.(?P<p>weight|bias)", "stages.{s}.blocks.{j}.layernorm_after.{p}"),
    (r"block(?P<n>[1-4])\.(?P<j>\d+)\.attn\.q\.(?P<p>weight|bias)", "stages.{s}.blocks.{j}.attention.q_proj.{p}"),
    (r"block(?P<n>[1-4])\.(?P<j>\d+)\.attn\.kv\.(?P<p>weight|bias)", "stages.{s}.blocks.{j}.attention.{part}_proj.{p}",
     ("k", "v")),
    (r"block(?P<n>[1-4])\.(?P<j>\d+)\.attn\.proj\.(?P<p>weight|bias)", "stages.{s}.blocks.{j}.attention.o_proj.{p}"),
    (r"block(?P<n>[1-4])\.(?P<j>\d+)\.attn\.sr\.(?P<p>weight|bias)",
     "stages.{s}.blocks.{j}.attention.sequence_reduction.sequence_reduction.{p}"),
    (r"block(?P<n>[1-4])\.(?P<j>\d+)\.attn\.norm\.(?P<p>weight|bias)",
     "stages.{s}.blocks.{j}.attention.sequence_reduction.layer_norm.{p}"),
    (r"block(?P<n>[1-4])\.(?P<j>\d+)\.mlp\.(?P<m>fc1|fc2|dwconv\.dwconv)\.(?P<p>weight|bias)",
     "stages.{s}.blocks.{j}.mlp.{m}.{p}"),
    (r"norm(?P<n>[1-4])\.(?P<p>weight|bias)", "stages.{s}.layer_norm.{p}"),
]


def mit_config(spec: EncoderSpec) -> SegformerConfig:
    """The SegformerConfig of MiT size `spec` (mit_b0 .. mit_b5) as SegFormer trains it."""
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


class MiTEncoder(Encoder):
    """The four MiT stages; returns c1..c4 at strides 4, 8, 16, 32. Parameter names are those of
    `SegformerModel` in transformers 5.x (`stages.N.blocks.M.attention.q_proj`, ...), at the top of ours."""

    family = "mit"
    transformers_class = SegformerModel
    weights_prefix = ""
    original_keys = MIT_KEYS
    original_dropped = ("head.",)  # the ImageNet classifier of the mit_bX.pth files

    def __init__(self, spec: EncoderSpec, pos_embed: str = "release"):
        super().__init__(spec, pos_embed)
        self.config = mit_config(spec)
        self.stages = SegformerModel(self.config).stages
        use_attention(self.config)
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
