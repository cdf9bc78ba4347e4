"""The segmenter of METHODS.md 1: encoder -> AllSpark bottleneck on the last feature map -> SegFormer or DPT head."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from allspark.config.loading import config_from_dict, model_config_from_dict
from allspark.config.schema import Config, ModelConfig
from allspark.encoders.registry import build_encoder
from allspark.encoders.specs import encoder_spec, fit_to_patch
from allspark.models.allspark import AllSparkBottleneck
from allspark.models.dpt import DPTHead


class DecodeHead(nn.Module):
    """SegFormer's all-MLP head (METHODS.md 1): per-stage Linear to E, resize to c1, concat c4..c1,
    1x1 conv + BN + ReLU, Dropout2d(0.1), 1x1 conv to K classes; initialised as the release's."""

    def __init__(self, in_channels: Sequence[int], embed_dim: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.linear_c1 = nn.Linear(in_channels[0], embed_dim)
        self.linear_c2 = nn.Linear(in_channels[1], embed_dim)
        self.linear_c3 = nn.Linear(in_channels[2], embed_dim)
        self.linear_c4 = nn.Linear(in_channels[3], embed_dim)
        self.fuse = nn.Conv2d(4 * embed_dim, embed_dim, kernel_size=1, bias=False)
        # the release's conv + BN + ReLU block (mmcv ConvModule) draws its conv kaiming-normal over fan_out:
        # std sqrt(2 / E), about 5x torch's default for E = 256; the other layers keep torch's defaults, as there
        nn.init.kaiming_normal_(self.fuse.weight, mode="fan_out", nonlinearity="relu")
        self.fuse_bn = nn.BatchNorm2d(embed_dim)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(embed_dim, num_classes, kernel_size=1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """fuse(concat(resize(linear_i(c_i)))) computed as sum(resize(fuse_i(linear_i(c_i)))): the same map,
        since both are per-pixel linear and bilinear resizing mixes pixels only, but each stage's two linear
        maps merge into one (E x C_i) at its own resolution, instead of a 4E -> E conv at H/4 x W/4."""
        size = feats[0].shape[-2:]
        fuse = self.fuse.weight.flatten(1)  # (E, 4E); input channels in the order c4, c3, c2, c1
        embed = fuse.shape[0]
        fused = None
        for stage, (feat, linear) in enumerate(zip(feats, (self.linear_c1, self.linear_c2, self.linear_c3,
                                                          self.linear_c4))):
            part = fuse[:, (3 - stage) * embed:(4 - stage) * embed]  # (E, E): the columns reading this stage
            n, _, h, w = feat.shape
            x = F.linear(feat.flatten(2).transpose(1, 2), part @ linear.weight, part @ linear.bias)  # (N, h*w, E)
            x = x.transpose(1, 2).reshape(n, embed, h, w)
            if (h, w) != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            fused = x if fused is None else fused + x
        x = F.relu(self.fuse_bn(fused))  # (N, E, H/4, W/4)
        return self.classifier(self.dropout(x))  # (N, K, H/4, W/4)


def mask_channels(feat: torch.Tensor, masks: torch.Tensor, start: int) -> torch.Tensor:
    """feat (N, C_s, h, w) with rows start.. multiplied by masks (N - start, C) channel by channel, its first C_s
    columns: one draw serves every stage, as UniMatch V2's one mask serves its four equally wide DINOv2 layers."""
    scale = torch.cat([masks.new_ones(start, feat.shape[1]), masks[:, :feat.shape[1]]]).to(feat.dtype)
    return feat * scale[:, :, None, None]


class AllSparkSegmenter(nn.Module):
    """Encoder -> AllSpark on the last feature map (nothing for ablation `none`) -> head -> input size.

    `model(images)` is per-image inference (METHODS.md 1.3); `model(images_l, images_u=..., ...)` is the
    training step (METHODS.md 1.1) and returns (logits_l, logits_u); `model(images, channel_masks=...)` scales the
    encoder features channel by channel (recipe.comp_drop). A ViT sees its input resized to whole patches
    (encoders.specs.fit_to_patch) and its logits resized back."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.spec = encoder_spec(cfg.encoder)
        self.encoder = build_encoder(self.spec, cfg.pos_embed)
        if cfg.freeze_encoder:
            self.encoder.requires_grad_(False)
        channels = self.spec.channels
        self.allspark = None
        if cfg.ablation != "none":
            grid = self.spec.feature_grid(cfg.crop_size)  # (h, w) of the last map: the memory's d = h*w
            self.allspark = AllSparkBottleneck(channels[-1], cfg.num_classes, grid, heads=cfg.heads,
                                               ablation=cfg.ablation, grouping=cfg.grouping,
                                               stride=self.spec.stride)
        self.head_name = self.spec.head(cfg.head)
        if self.head_name == "dpt":
            features, widths = self.spec.dpt
            self.head = DPTHead(channels[-1], cfg.num_classes, features, widths)
        else:
            self.head = DecodeHead(channels, cfg.embed_dim or self.spec.segformer_dim, cfg.num_classes)

    def forward(self, images: torch.Tensor, images_u: torch.Tensor | None = None,
                teacher_logits_u: torch.Tensor | None = None, use_memory: bool = False,
                channel_masks: torch.Tensor | None = None):
        if images_u is not None:
            return self.forward_semi(images, images_u, teacher_logits_u, use_memory, channel_masks)
        h, w = images.shape[-2:]
        if not self.spec.is_vit:
            return self._infer(images, channel_masks)
        # a ViT sees whole patches: the input resized to the nearest (bilinear, aligned corners, as UniMatch V2's
        # evaluation) and the logits back; an exported graph always resizes, as its sizes are symbolic
        fit = (fit_to_patch(h, self.spec.patch), fit_to_patch(w, self.spec.patch))
        if fit == (h, w) and not torch.compiler.is_exporting():
            return self._infer(images, channel_masks)
        fitted = F.interpolate(images, size=fit, mode="bilinear", align_corners=True)
        logits = self._infer(fitted, channel_masks)
        return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=True)

    def _infer(self, images: torch.Tensor, channel_masks: torch.Tensor | None) -> torch.Tensor:
        feats = self.encoder(images)
        if channel_masks is not None:  # a pass of unlabeled views alone (recipe.passes apart)
            feats = [mask_channels(feat, channel_masks, 0) for feat in feats]
        if self.allspark is not None:
            feats[3] = self.allspark(feats[3])  # (N, C, h, w), each image on its own
        return self._decode(feats, images.shape[-2:])

    def forward_semi(self, images_l: torch.Tensor, images_u: torch.Tensor,
                     teacher_logits_u: torch.Tensor | None = None, use_memory: bool = False,
                     channel_masks: torch.Tensor | None = None):
        """One student pass on [labeled ; unlabeled] (METHODS.md 2, step 2): encoder and head see the
        whole batch (BatchNorm statistics over both), AllSpark gets the two halves of c4. channel_masks
        (B_u, C) scale the unlabeled rows' encoder features channel by channel (recipe.comp_drop)."""
        if images_l.shape[1:] != images_u.shape[1:]:
            raise ValueError(f"labeled and unlabeled images must share a shape; got {tuple(images_l.shape)} "
                             f"and {tuple(images_u.shape)}")
        n_l = images_l.shape[0]
        feats = self.encoder(torch.cat([images_l, images_u]))
        if channel_masks is not None:
            feats = [mask_channels(feat, channel_masks, n_l) for feat in feats]
        if self.allspark is not None:
            y_l, y_u = self.allspark.forward_semi(feats[3][:n_l], feats[3][n_l:], teacher_logits_u, use_memory)
            feats[3] = torch.cat([y_l, y_u])  # (B_l + B_u, C, h, w)
        logits = self._decode(feats, images_l.shape[-2:])
        # split, not two slices: its backward joins the two gradients, where each slice's writes a zero-filled
        # full-size one (two fills and two copies of the full-resolution logits per step)
        logits_l, logits_u = logits.split([n_l, len(logits) - n_l])
        return logits_l, logits_u

    def _decode(self, feats: list[torch.Tensor], size) -> torch.Tensor:
        logits = self.head(feats)  # (N, K, H/4, W/4) SegFormer; (N, K, 8 H/patch, 8 W/patch) DPT
        if logits.dtype in (torch.bfloat16, torch.float16):
            # the loss and confidences read fp32 logits: cast before resizing, where the map is 16-64x smaller;
            # fp32 resizing on the CPU is also faster than bf16's, forward and backward (bench_bf16)
            logits = logits.float()
        # each head's release resizes its logits its own way: SegFormer's half-pixel, DPT's with aligned corners
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=self.head_name == "dpt")


def model_config(cfg: Config | ModelConfig | Mapping) -> ModelConfig:
    """A validated ModelConfig from a Config, a ModelConfig, or a mapping (ModelConfig fields or a whole Config)."""
    if isinstance(cfg, Config):
        return cfg.model
    if isinstance(cfg, ModelConfig):
        return model_config_from_dict(dataclasses.asdict(cfg))
    if isinstance(cfg, Mapping):
        return config_from_dict(dict(cfg)).model if "model" in cfg else model_config_from_dict(dict(cfg))
    raise TypeError(f"expected a Config, ModelConfig or mapping, got {type(cfg).__name__}")
