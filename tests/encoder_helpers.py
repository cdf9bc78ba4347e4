"""Tiny registry entries of every encoder family (2-4 layers, small widths), so tests build each in milliseconds."""
from __future__ import annotations

import contextlib

from allspark.encoders.registry import FAMILIES, register_encoder
from allspark.encoders.specs import ENCODERS, EncoderSpec

_VIT = {"num_hidden_layers": 4, "num_attention_heads": 2}
TINY = {
    "dinov2_tiny": EncoderSpec("dinov2_tiny", "dinov2", (32,) * 4, patch=14, blocks=(0, 1, 2, 3), dpt=(8, (8, 8, 16, 16)),
                               hf={**_VIT, "hidden_size": 32, "mlp_ratio": 2, "image_size": 42, "patch_size": 14},
                               pos_embed_choice=True),
    "dinov2_giant_tiny": EncoderSpec("dinov2_giant_tiny", "dinov2", (32,) * 4, patch=14, blocks=(0, 1, 2, 3),
                                     dpt=(8, (8, 8, 16, 16)), hf={**_VIT, "hidden_size": 32, "image_size": 42,
                                                                  "patch_size": 14, "use_swiglu_ffn": True},
                                     pos_embed_choice=True),
    "dinov2_reg_tiny": EncoderSpec("dinov2_reg_tiny", "dinov2_reg", (32,) * 4, patch=14, blocks=(0, 1, 2, 3),
                                   dpt=(8, (8, 8, 16, 16)), hf={**_VIT, "hidden_size": 32, "mlp_ratio": 2,
                                                                "image_size": 42, "patch_size": 14,
                                                                "num_register_tokens": 2}),
    "dinov3_vit_tiny": EncoderSpec("dinov3_vit_tiny", "dinov3_vit", (32,) * 4, patch=16, blocks=(0, 1, 2, 3),
                                   dpt=(8, (8, 8, 16, 16)), hf={**_VIT, "hidden_size": 32, "intermediate_size": 64,
                                                                "patch_size": 16, "num_register_tokens": 2}),
    "dinov3_convnext_test": EncoderSpec("dinov3_convnext_test", "dinov3_convnext", (8, 16, 24, 32),
                                        hf={"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1]}),
}


@contextlib.contextmanager
def tiny_encoders():
    """The TINY entries registered with their families for the duration of the block (names valid in configs too)."""
    for spec in TINY.values():
        register_encoder(FAMILIES[spec.family], spec)
    try:
        yield TINY
    finally:
        for name in TINY:
            ENCODERS.pop(name, None)
