"""The frozen teacher of distillation: an encoder of any family, loaded as `model.pretrained` loads one."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from allspark.encoders.base import Encoder
from allspark.encoders.registry import build_encoder
from allspark.encoders.specs import encoder_spec, fit_to_patch
from allspark.errors import ConversionError, DataError, InputError
from allspark.models.pretrained import load_pretrained_encoder


def load_teacher(source: str, encoder: str, pos_embed: str = "release") -> Encoder:
    """The `encoder`-sized teacher with the weights of `source` (a weights file, a run, a Hugging Face folder or hub
    id), frozen and in eval mode; a source that does not load says so in one line naming --teacher."""
    teacher = build_encoder(encoder_spec(encoder), pos_embed)
    try:
        load_pretrained_encoder(teacher, source)
    except InputError as err:
        if isinstance(err, DataError):
            raise  # names its file already
        raise _named(err, source, encoder, teacher.family) from None
    except FileNotFoundError as err:  # a run folder without weights
        raise InputError(f"--teacher {source}: {err}") from None
    return teacher.requires_grad_(False).eval()


def _named(err: InputError, source: str, encoder: str, family: str) -> InputError:
    """`err` as one line naming --teacher; a file of another encoder says which --teacher-encoder fits it."""
    if getattr(err, "held", None) is None:
        return type(err)(f"--teacher {source} (--teacher-encoder {encoder}): {err}")
    held_family, size = err.held
    fix = f"set --teacher-encoder {size}" if size else "pass a teacher of a registered size"
    return ConversionError(f"--teacher {source} holds {size or 'unregistered'} weights ({held_family} family), not "
                           f"weights of --teacher-encoder {encoder} ({family} family); {fix}")


@torch.no_grad()
def teacher_map(teacher: Encoder, images: torch.Tensor) -> torch.Tensor:
    """The teacher's last feature map of `images`; a ViT teacher sees them resized to whole patches, as the
    segmenter does."""
    if teacher.spec.is_vit:
        side = [fit_to_patch(size, teacher.spec.patch) for size in images.shape[-2:]]
        if side != list(images.shape[-2:]):
            images = F.interpolate(images, size=side, mode="bilinear", align_corners=True)
    return teacher(images)[-1]
