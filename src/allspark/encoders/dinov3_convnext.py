"""DINOv3's ConvNeXts through transformers; their weights load from Hugging Face only."""
from __future__ import annotations

from transformers import DINOv3ConvNextBackbone

from allspark.encoders.base import BackboneEncoder


class DINOv3ConvNeXtEncoder(BackboneEncoder):
    """A DINOv3 ConvNeXt: its four stages at strides 4, 8, 16, 32, under `backbone.`."""

    family = "dinov3_convnext"
    transformers_class = DINOv3ConvNextBackbone
