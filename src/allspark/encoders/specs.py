"""What an encoder is, written once: every `model.encoder` name with its family, size, feature widths, stride or
patch, the ViT blocks a head reads, its default head and the transformers config it is built from.

Config validation, the segmenter, weight loading and conversion all read this table; it imports nothing heavy,
so the command line stays fast. Adding a size is one entry (and one test); adding a family is a class in this
room and `registry.register_encoder`."""
from __future__ import annotations

from dataclasses import dataclass, field

from allspark.errors import ConfigError

HEADS = ("auto", "segformer", "dpt")  # model.head; auto: the encoder's own (EncoderSpec.head)
POS_EMBED_MODES = ("release", "exact")  # model.pos_embed: how a DINOv2 resizes its position table (METHODS.md 10)
HIERARCHICAL_STRIDE = 32  # the stride of the last map of a MiT or ConvNeXt (four stages, each halving or more)


@dataclass(frozen=True)
class EncoderSpec:
    """One `model.encoder`: `channels` are the widths of the four feature maps the heads read; a ViT (`patch` set)
    gives them all at stride `patch` from its `blocks` (0-based, each through the final norm); a hierarchical
    encoder gives them at strides 4, 8, 16, 32. `hf` holds the transformers config fields of the size. `family`
    names the class that builds it (registry.FAMILIES); the family's rules that config validation reads without
    building anything are fields here: `ceil_grid` (its maps pad, so a side is ceil(crop / stride), not floor) and
    `pos_embed_choice` (model.pos_embed applies)."""

    name: str
    family: str
    channels: tuple[int, int, int, int]
    hf: dict = field(default_factory=dict)
    patch: int | None = None
    blocks: tuple[int, int, int, int] | None = None
    dpt: tuple[int, tuple[int, int, int, int]] | None = None  # UniMatch V2's DPT (features, out_channels)
    segformer_dim: int = 256  # the SegFormer head's width E when model.embed_dim is unset
    ceil_grid: bool = False
    pos_embed_choice: bool = False

    @property
    def is_vit(self) -> bool:
        return self.patch is not None

    def head(self, choice: str = "auto") -> str:
        """The head `model.head` = choice names for this encoder: auto is DPT where the size has DPT widths."""
        if choice != "auto":
            return choice
        return "dpt" if self.dpt is not None else "segformer"

    @property
    def stride(self) -> int:
        """The stride of the last feature map (the one AllSpark reads): the patch of a ViT, else 32."""
        return self.patch or HIERARCHICAL_STRIDE

    def feature_grid(self, crop_size: int) -> tuple[int, int]:
        """(h, w) of the last feature map of a square crop: the AllSpark memory's token count is h * w."""
        side = -(-crop_size // self.stride) if self.ceil_grid else crop_size // self.stride
        return side, side


def fit_to_patch(size: int, patch: int) -> int:
    """The side a ViT sees for an input side `size`: the nearest multiple of the patch (at least one patch), as
    UniMatch V2 resizes images for its 'original' evaluation. Training crops and windows are multiples already."""
    return max(patch, (2 * size + patch) // (2 * patch) * patch)  # int(size / patch + 0.5) in integers


def _mit(name: str, widths, depths, dim: int) -> EncoderSpec:
    # MiT's overlapping patch embeddings pad: ceil at every stage (ConvNeXt's and a ViT's downsampling floors)
    return EncoderSpec(name, "mit", tuple(widths), hf={"hidden_sizes": list(widths), "depths": list(depths)},
                       segformer_dim=dim, ceil_grid=True)


_VIT12 = (2, 5, 8, 11)
_VIT24 = (4, 11, 17, 23)


def _dinov2(family: str, size: str, width: int, depth: int, heads: int, blocks, dpt, extra: dict,
            pos_embed_choice: bool) -> EncoderSpec:
    hf = {"hidden_size": width, "num_hidden_layers": depth, "num_attention_heads": heads, "image_size": 518,
          "patch_size": 14, "layerscale_value": 1.0, "layer_norm_eps": 1e-6, **extra}
    return EncoderSpec(f"{family}_{size}", family, (width,) * 4, hf=hf, patch=14, blocks=blocks, dpt=dpt,
                       segformer_dim=256 if width <= 384 else 768, pos_embed_choice=pos_embed_choice)


# UniMatch V2's DPT widths per DINOv2 size (its model_configs): (features, out_channels)
_DPT = {
    "small": (64, (48, 96, 192, 384)),
    "base": (128, (96, 192, 384, 768)),
    "large": (256, (256, 512, 1024, 1024)),
    "giant": (384, (1536, 1536, 1536, 1536)),
}
_DINOV2_SIZES = {  # width, depth, heads, blocks, extra config
    "small": (384, 12, 6, _VIT12, {}),
    "base": (768, 12, 12, _VIT12, {}),
    "large": (1024, 24, 16, _VIT24, {}),
    "giant": (1536, 40, 24, (9, 19, 29, 39), {"use_swiglu_ffn": True}),
}
# DINOv3 ViTs (patch 16, four registers, RoPE); their DPT widths follow the DINOv2 size of the same width
_DINOV3_VIT_SIZES = {"s": ("small", 384, 12, 6), "b": ("base", 768, 12, 12), "l": ("large", 1024, 24, 16)}
_DINOV3_CONVNEXT_SIZES = {
    "tiny": ((96, 192, 384, 768), (3, 3, 9, 3)),
    "small": ((96, 192, 384, 768), (3, 3, 27, 3)),
    "base": ((128, 256, 512, 1024), (3, 3, 27, 3)),
    "large": ((192, 384, 768, 1536), (3, 3, 27, 3)),
}


def _table() -> dict[str, EncoderSpec]:
    specs = [
        _mit("mit_b0", (32, 64, 160, 256), (2, 2, 2, 2), 256),
        _mit("mit_b1", (64, 128, 320, 512), (2, 2, 2, 2), 256),
        _mit("mit_b2", (64, 128, 320, 512), (3, 4, 6, 3), 768),
        _mit("mit_b3", (64, 128, 320, 512), (3, 4, 18, 3), 768),
        _mit("mit_b4", (64, 128, 320, 512), (3, 8, 27, 3), 768),
        _mit("mit_b5", (64, 128, 320, 512), (3, 6, 40, 3), 768),
    ]
    # DINOv2 resizes its position table either way (model.pos_embed); with registers it resizes as transformers does
    for family, registers, choice in (("dinov2", {}, True), ("dinov2_reg", {"num_register_tokens": 4}, False)):
        for size, (width, depth, heads, blocks, extra) in _DINOV2_SIZES.items():
            specs.append(_dinov2(family, size, width, depth, heads, blocks, _DPT[size], {**extra, **registers}, choice))
    for letter, (size, width, depth, heads) in _DINOV3_VIT_SIZES.items():
        hf = {"hidden_size": width, "intermediate_size": 4 * width, "num_hidden_layers": depth,
              "num_attention_heads": heads, "patch_size": 16, "num_register_tokens": 4}
        specs.append(EncoderSpec(f"dinov3_vit{letter}16", "dinov3_vit", (width,) * 4, hf=hf, patch=16,
                                 blocks=_VIT12 if depth == 12 else _VIT24, dpt=_DPT[size],
                                 segformer_dim=256 if width <= 384 else 768))
    for size, (widths, depths) in _DINOV3_CONVNEXT_SIZES.items():
        specs.append(EncoderSpec(f"dinov3_convnext_{size}", "dinov3_convnext", widths,
                                 hf={"hidden_sizes": list(widths), "depths": list(depths)}, segformer_dim=768))
    return {spec.name: spec for spec in specs}


ENCODERS: dict[str, EncoderSpec] = _table()


def encoder_spec(name: str) -> EncoderSpec:
    """The spec of `model.encoder` name; a ConfigError naming the key for an unknown one."""
    try:
        return ENCODERS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"key 'model.encoder' must be one of {', '.join(ENCODERS)}; got {name!r}",
                          "model.encoder") from None
