"""DINOv3's ViTs (patch 16, four registers, RoPE) through transformers; their weights load from Hugging Face only."""
from __future__ import annotations

from transformers import DINOv3ViTBackbone

from allspark.encoders.base import ViTEncoder


class DINOv3ViTEncoder(ViTEncoder):
    """A DINOv3 ViT: RoPE needs no position table, so any grid of whole patches is read as transformers does."""

    family = "dinov3_vit"
    transformers_class = DINOv3ViTBackbone
