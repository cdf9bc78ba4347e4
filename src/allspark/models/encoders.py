"""SegFormer's Mix Transformer (MiT-B0..B5) from `transformers`, and its pretrained sources
(a Hugging Face id or directory, or an original `mit_bX.pth` ImageNet file)."""
from __future__ import annotations

from pathlib import Path

import math

import torch
from torch import nn
from transformers import SegformerConfig, SegformerModel

from allspark.config import ConfigError

# (stage widths, blocks per stage) of each size; heads, sr ratios and patch sizes are shared (spec 1).
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

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        x = images  # (N, 3, H, W)
        for stage in self.stages:
            x = stage(x)  # (N, C_i, H / s_i, W / s_i)
            feats.append(x)
        return feats


def load_pretrained_encoder(encoder: MiTEncoder, source: str) -> None:
    """Load weights into `encoder` from an original `mit_bX.pth` file, a Hugging Face directory or hub id,
    or the encoder of one of our own `.safetensors` checkpoints (e.g. a SupBaseline run to fine-tune from);
    every key must match (errors list the ones that do not)."""
    from allspark.models.convert import Converted, load_exact, mit_to_hf, read_checkpoint

    if Path(source).suffix == ".safetensors":
        from allspark.engine.checkpoint import read_weights

        state, _ = read_weights(source)
        tensors = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
        load_exact(encoder, Converted(tensors=tensors, origin={k: f"encoder.{k}" for k in tensors}), source)
        return
    if Path(source).is_file():
        state, where = read_checkpoint(source)
        load_exact(encoder, mit_to_hf(state, drop_head=True), where)
        return
    if not Path(source).is_dir():
        _check_hub(source)
    try:
        hf, info = SegformerModel.from_pretrained(source, output_loading_info=True)
    except OSError as err:
        raise ValueError(f"model.pretrained {source!r} is not a file, and loading it as a Hugging Face "
                         f"directory or hub id failed: {err}") from None
    # transformers fills missing weights with random ones; a classification or segmentation head is dropped.
    extra = sorted(k for k in info["unexpected_keys"] if not k.startswith(("classifier.", "decode_head.")))
    missing = sorted(info["missing_keys"]) + sorted(str(k) for k in info["mismatched_keys"])
    if extra or missing:
        raise ValueError(f"model.pretrained {source!r}: encoder weights missing or misshapen: {missing}; "
                         f"unknown weights: {extra}")
    found = (tuple(hf.config.hidden_sizes), tuple(hf.config.depths))
    if found != MIT_SIZES[encoder.name]:
        raise ValueError(f"model.pretrained {source!r} holds an encoder with widths {found[0]} and depths {found[1]}; "
                         f"model.encoder {encoder.name} expects {MIT_SIZES[encoder.name]}")
    state = hf.state_dict()
    load_exact(encoder, Converted(tensors=state, origin={k: k for k in state}), source)


HUB_TIMEOUT_S = 10.0


def _check_hub(source: str) -> None:
    """Fail fast on a hub id that is neither in the local Hugging Face cache nor reachable (offline, no DNS):
    `from_pretrained` would retry for half a minute and then raise a long traceback."""
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError, HfHubHTTPError, RepositoryNotFoundError

    hint = "set model.pretrained=null (random init) or to a local folder / mit_bX.pth file"
    try:
        if isinstance(try_to_load_from_cache(source, "config.json"), str):
            return
        HfApi().model_info(source, timeout=HUB_TIMEOUT_S)
    except HFValidationError:
        raise ConfigError(f"model.pretrained {source!r} is not a file, folder or Hugging Face hub id; {hint}") from None
    except RepositoryNotFoundError:
        raise ConfigError(f"model.pretrained {source!r}: no such file, folder or Hugging Face hub model; {hint}") from None
    except HfHubHTTPError:
        return  # the hub answered (e.g. a gated model): from_pretrained reports it
    except Exception as err:  # any other failure means no answer: offline mode, DNS, refused, timed out
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"model.pretrained {source!r}: not in the local Hugging Face cache and the hub cannot be "
                          f"reached ({reason}); {hint}") from None
