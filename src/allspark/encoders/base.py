"""What every encoder family shares: the class attributes weight loading reads, transformers' backbones giving
four feature maps, the ViTs among them, and activation checkpointing."""
from __future__ import annotations

import functools
import re
from collections.abc import Collection

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

from allspark.encoders.attention import use_attention
from allspark.encoders.specs import EncoderSpec


class Encoder(nn.Module):
    """An encoder family: `cls(spec, pos_embed)` builds the size `spec`, randomly initialised, whose forward gives
    four feature maps (N, spec.channels[i], h_i, w_i). The class attributes tell weight loading where weights come
    from: `transformers_class` reads a Hugging Face folder or hub id, its weights sit under `weights_prefix` in ours;
    `original_keys` are the rules naming an original release file's keys in ours (None: no such file is read) and
    `original_dropped` the prefixes of its keys that hold nothing of ours (a classifier)."""

    family: str = ""  # the name EncoderSpec.family gives
    transformers_class: type | None = None
    weights_prefix = "backbone."
    original_keys: list | None = None
    original_dropped: tuple[str, ...] = ()

    def __init__(self, spec: EncoderSpec, pos_embed: str = "release"):
        super().__init__()
        self.spec, self.name, self.channels = spec, spec.name, spec.channels

    @classmethod
    def holds_original(cls, keys: Collection[str]) -> bool:
        """Whether `keys` (a state dict's) are mostly this family's original release names: a file of this family,
        of whichever size, told apart for the error that names what a pretrained file holds."""
        if cls.original_keys is None:
            return False
        kept = [key for key in keys if not key.startswith(cls.original_dropped)]
        named = sum(any(re.fullmatch(rule[0], key) for rule in cls.original_keys) for key in kept)
        return 2 * named > len(kept) > 0


class BackboneEncoder(Encoder):
    """A family built as one of transformers' backbones, under `backbone.`: the maps of `backbone_options`."""

    def __init__(self, spec: EncoderSpec, pos_embed: str = "release"):
        super().__init__(spec, pos_embed)
        model_class = self.transformers_class
        self.backbone = model_class(model_class.config_class(**spec.hf, **self.backbone_options()))
        use_attention(self.backbone.config)

    def backbone_options(self) -> dict:
        """Config fields beside the size's: which hidden states come out and how (a hierarchy's four stages)."""
        return {"out_indices": [1, 2, 3, 4]}

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.backbone(images).feature_maps)  # 4 x (N, C_i, h_i, w_i)


class ViTEncoder(BackboneEncoder):
    """A ViT from transformers, giving the four maps of the spec's blocks, each through the final norm, at stride
    `patch` (UniMatch V2's get_intermediate_layers). The input must be whole patches (the segmenter resizes to them).
    A family whose position table resizes its own way names its embeddings class in `embeddings_class`."""

    def __init__(self, spec: EncoderSpec, pos_embed: str = "release"):
        super().__init__(spec, pos_embed)
        replacement = self.embeddings_class(pos_embed)
        if replacement is not None:
            self.backbone.embeddings = rebuilt_as(self.backbone.embeddings, replacement)
        # the masked-image token of DINO's pretraining is never read here: frozen, so DDP sees no unused parameter
        # (the release trains with find_unused_parameters and AdamW skips it as gradient-free: the same)
        self.backbone.embeddings.mask_token.requires_grad_(False)

    def backbone_options(self) -> dict:
        return {"out_indices": [b + 1 for b in self.spec.blocks], "apply_layernorm": True,
                "reshape_hidden_states": True}

    def embeddings_class(self, pos_embed: str) -> type | None:
        """The subclass of transformers' embeddings this family uses instead of theirs (None: theirs)."""
        return None


def rebuilt_as(module: nn.Module, cls: type) -> nn.Module:
    """`module` as an instance of its subclass `cls` holding the very same tensors: built on the meta device first,
    so it draws no random numbers (everything built after it is drawn as for the stock module) and takes no memory."""
    with torch.device("meta"):
        rebuilt = cls(module.config)
    rebuilt.load_state_dict(module.state_dict(), assign=True)
    return rebuilt.train(module.training)


def checkpoint_layers(module: nn.Module) -> None:
    """Recompute every transformer block of `module` in the backward pass instead of keeping its activations,
    through transformers' own switch on its layers; dropout and drop-path replay the same masks (RNG state kept)."""
    replay = functools.partial(checkpoint, use_reentrant=False)
    for layer in module.modules():
        if isinstance(layer, GradientCheckpointingLayer):
            layer.gradient_checkpointing, layer._gradient_checkpointing_func = True, replay
