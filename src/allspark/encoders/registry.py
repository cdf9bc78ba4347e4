"""The encoder families and `register_encoder`: from a spec to the class that builds it, as timm's register_model
and transformers' Auto classes map a name to its class. Nothing outside the family classes asks which family."""
from __future__ import annotations

from allspark.encoders.base import Encoder
from allspark.encoders.dinov2 import DINOv2Encoder, DINOv2RegistersEncoder
from allspark.encoders.dinov3_convnext import DINOv3ConvNeXtEncoder
from allspark.encoders.dinov3_vit import DINOv3ViTEncoder
from allspark.encoders.mit import MiTEncoder
from allspark.encoders.specs import ENCODERS, EncoderSpec
from allspark.errors import ConfigError

FAMILIES: dict[str, type[Encoder]] = {family.family: family for family in (
    MiTEncoder, DINOv2Encoder, DINOv2RegistersEncoder, DINOv3ViTEncoder, DINOv3ConvNeXtEncoder)}


def register_encoder(family: type[Encoder], *specs: EncoderSpec) -> None:
    """Make `family` (a subclass of encoders.base.Encoder) build every spec that names its `family`, and each of
    `specs` a valid `model.encoder` (a name already taken is replaced, so a test or a user may redefine a size)."""
    if not family.family:
        raise ValueError(f"{family.__name__}.family must name the family its specs give")
    wrong = [spec.name for spec in specs if spec.family != family.family]
    if wrong:
        raise ValueError(f"specs {wrong} name another family than {family.__name__}'s {family.family!r}")
    FAMILIES[family.family] = family
    ENCODERS.update({spec.name: spec for spec in specs})


def family_of(spec: EncoderSpec) -> type[Encoder]:
    """The class that builds `spec`; a ConfigError naming the key for a family nobody registered."""
    try:
        return FAMILIES[spec.family]
    except KeyError:
        raise ConfigError(f"key 'model.encoder' is {spec.name!r} of family {spec.family!r}, which no class builds "
                          f"(families: {', '.join(FAMILIES)}; add one with allspark.register_encoder)",
                          "model.encoder") from None


def family_holding(keys) -> type[Encoder] | None:
    """The family whose original release names `keys` (a state dict's) are, each family judging its own; None when
    no family claims them."""
    return next((family for family in FAMILIES.values() if family.holds_original(keys)), None)


def sizes_of(family: type[Encoder]) -> list[EncoderSpec]:
    """Every registered spec that `family` builds."""
    return [spec for spec in ENCODERS.values() if FAMILIES.get(spec.family) is family]


def build_encoder(spec: EncoderSpec, pos_embed: str = "release") -> Encoder:
    """The encoder of `spec`, randomly initialised (model.pos_embed = pos_embed where its family reads it)."""
    return family_of(spec)(spec, pos_embed)
