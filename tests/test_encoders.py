"""Every encoder family x head x AllSpark on/off on tiny random configs: shapes, per-image inference, a training
step, the frozen encoder, save/load, the patch rule, the position-table modes and the config checks."""
import math

import pytest
import torch
import torch.nn.functional as F

from allspark.config.loading import config_from_dict
from allspark.config.schema import ModelConfig
from allspark.encoders.dinov2 import ReleasePositionEmbeddings, _bicubic_matrix
from allspark.encoders.specs import ENCODERS, fit_to_patch
from allspark.errors import ConfigError
from allspark.models.segmenter import AllSparkSegmenter
from allspark.models.weights import load_model
from allspark.runs.weights_file import save_weights
from encoder_helpers import TINY, tiny_encoders

K = 3
CASES = [(name, head, ablation) for name, spec in TINY.items() if name != "dinov2_giant_tiny"
         for head in (("segformer", "dpt") if spec.is_vit else ("segformer",)) for ablation in ("none", "full")]
CASES.append(("mit_b0", "segformer", "full"))


@pytest.fixture(autouse=True)
def registered():
    with tiny_encoders():
        yield


def crop_for(name: str) -> int:
    spec = ENCODERS[name]
    return 4 * spec.patch if spec.is_vit else 64


def segmenter(name, head="auto", ablation="full", **model) -> AllSparkSegmenter:
    torch.manual_seed(0)
    cfg = ModelConfig(encoder=name, num_classes=K, crop_size=crop_for(name), head=head, ablation=ablation,
                      embed_dim=16, **model)
    return AllSparkSegmenter(cfg)


@pytest.mark.parametrize("name,head,ablation", CASES)
def test_shapes_and_per_image_inference(name, head, ablation):
    model = segmenter(name, head, ablation).eval()
    crop = crop_for(name)
    images = torch.randn(3, 3, crop, crop)
    with torch.no_grad():
        logits = model(images)
        alone = torch.cat([model(image[None]) for image in images])
        odd = model(torch.randn(1, 3, crop - 5, crop + 9))  # any size: a ViT resizes to whole patches and back
    assert logits.shape == (3, K, crop, crop)
    assert torch.allclose(logits, alone, atol=1e-5)  # no image sees another
    assert odd.shape == (1, K, crop - 5, crop + 9)


@pytest.mark.parametrize("name,head,ablation", CASES)
def test_training_step_reaches_every_trainable_weight(name, head, ablation):
    model = segmenter(name, head, ablation).train()
    crop = crop_for(name)
    images_l, images_u = torch.randn(2, 3, crop, crop), torch.randn(2, 3, crop, crop)
    teacher = torch.randn(2, K, crop, crop) if ablation == "full" else None
    logits_l, logits_u = model(images_l, images_u=images_u, teacher_logits_u=teacher, use_memory=True)
    assert logits_l.shape == logits_u.shape == (2, K, crop, crop)
    (logits_l.logsumexp(1).mean() + logits_u.logsumexp(1).mean()).backward()
    idle = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert idle == []  # DDP needs no find_unused_parameters


def test_freeze_encoder_trains_the_rest_only():
    model = segmenter("dinov2_tiny", freeze_encoder=True).train()
    assert not any(p.requires_grad for p in model.encoder.parameters())
    crop = crop_for("dinov2_tiny")
    model(torch.randn(2, 3, crop, crop)).mean().backward()
    assert all(p.grad is not None for p in model.head.parameters())


def test_auto_head_is_dpt_for_vits_and_segformer_otherwise():
    assert type(segmenter("dinov2_tiny").head).__name__ == "DPTHead"
    assert type(segmenter("dinov3_convnext_test").head).__name__ == "DecodeHead"
    assert type(segmenter("dinov2_tiny", head="segformer").head).__name__ == "DecodeHead"


def test_memory_tokens_follow_the_feature_grid_of_the_crop():
    model = segmenter("dinov2_tiny")
    side = crop_for("dinov2_tiny") // 14
    assert model.allspark.memory.queue.shape[-1] == side * side


@pytest.mark.parametrize("name", ["dinov2_reg_tiny", "dinov3_vit_tiny", "dinov3_convnext_test"])
def test_save_and_load_give_the_same_model(tmp_path, name):
    cfg = config_from_dict({"model": {"encoder": name, "num_classes": K, "crop_size": crop_for(name)}})
    model = AllSparkSegmenter(cfg.model).eval()
    save_weights(tmp_path / "w.safetensors", model.state_dict(), cfg)
    loaded, loaded_cfg = load_model(tmp_path / "w.safetensors")
    images = torch.randn(1, 3, crop_for(name), crop_for(name))
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))
    assert loaded_cfg.model.encoder == name


@pytest.mark.parametrize("size,patch,fit", [(98, 14, 98), (100, 14, 98), (106, 14, 112), (5, 14, 14), (513, 16, 512)])
def test_fit_to_patch_rounds_to_the_nearest_whole_patch(size, patch, fit):
    assert fit_to_patch(size, patch) == fit
    assert fit_to_patch(size, patch) == max(patch, int(size / patch + 0.5) * patch)


@pytest.mark.parametrize("rows,cols", [(7, 7), (4, 9), (37, 37), (52, 30)])
def test_release_position_resize_equals_bicubic_by_the_offset_factor(rows, cols):
    torch.manual_seed(0)
    table = torch.randn(37, 37, 6, dtype=torch.float64)
    expected = F.interpolate(table.permute(2, 0, 1)[None], scale_factor=((rows + 0.1) / 37, (cols + 0.1) / 37),
                             mode="bicubic", antialias=False)[0].permute(1, 2, 0)
    got = torch.einsum("hi,ijc,wj->hwc", _bicubic_matrix(rows, 37, (rows + 0.1) / 37, table), table,
                       _bicubic_matrix(cols, 37, (cols + 0.1) / 37, table))
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-12)


def test_position_modes_differ_off_the_table_grid_and_agree_on_it():
    release = segmenter("dinov2_tiny", ablation="none").encoder.backbone.embeddings
    exact = segmenter("dinov2_tiny", ablation="none", pos_embed="exact").encoder.backbone.embeddings
    assert isinstance(release, ReleasePositionEmbeddings) and not isinstance(exact, ReleasePositionEmbeddings)
    side = int(math.sqrt(release.position_embeddings.shape[1] - 1))  # 3: image_size 42 / patch 14
    for grid, differ in ((side, False), (side + 2, True)):
        tokens = torch.zeros(1, grid * grid + 1, 32)
        a = release.interpolate_pos_encoding(tokens, 14 * grid, 14 * grid)
        b = exact.interpolate_pos_encoding(tokens, 14 * grid, 14 * grid)
        assert a.shape == b.shape == (1, grid * grid + 1, 32)
        assert (not torch.allclose(a, b, atol=1e-4)) == differ


@pytest.mark.parametrize("overrides,key", [
    ({"encoder": "mit_b0", "head": "dpt"}, "model.head"),
    ({"encoder": "dinov2_small", "crop_size": 513}, "model.crop_size"),
    ({"encoder": "mit_b0", "pos_embed": "exact"}, "model.pos_embed"),
    ({"encoder": "dinov2_reg_small", "pos_embed": "exact"}, "model.pos_embed"),
    ({"encoder": "dinov9_small"}, "model.encoder"),
])
def test_config_refuses_what_an_encoder_cannot_do(overrides, key):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"model": overrides})
    assert err.value.keys[0] == key and "\n" not in str(err.value)


def test_crop_error_suggests_the_nearest_multiples():
    with pytest.raises(ConfigError, match="try 504 or 518"):
        config_from_dict({"model": {"encoder": "dinov2_base", "crop_size": 513}})
    with pytest.raises(ConfigError, match="eval.crop_size"):
        config_from_dict({"model": {"encoder": "dinov2_base", "crop_size": 518}, "eval": {"crop_size": 500}})


def test_registry_names_every_family_and_size():
    names = set(ENCODERS)
    for family, sizes in {"mit_b": "012345", "dinov2_": ("small", "base", "large", "giant"),
                          "dinov2_reg_": ("small", "base", "large", "giant"),
                          "dinov3_vit": ("s16", "b16", "l16"), "dinov3_convnext_": ("tiny", "small", "base")}.items():
        assert {family + size for size in sizes} <= names
    assert ENCODERS["dinov2_large"].blocks == (4, 11, 17, 23) and ENCODERS["dinov2_giant"].blocks == (9, 19, 29, 39)
    assert ENCODERS["dinov2_small"].dpt == (64, (48, 96, 192, 384))


def test_registers_position_resize_equals_transformers():
    """Ours only keeps the grid symbolic for export; the values are transformers' own."""
    from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import (
        Dinov2WithRegistersEmbeddings)
    embeddings = segmenter("dinov2_reg_tiny", ablation="none").encoder.backbone.embeddings
    for grid in (2, 3, 5, 8):
        tokens = torch.zeros(1, grid * grid + 1, 32)
        ours = embeddings.interpolate_pos_encoding(tokens, 14 * grid, 14 * grid)
        theirs = Dinov2WithRegistersEmbeddings.interpolate_pos_encoding(embeddings, tokens, 14 * grid, 14 * grid)
        assert torch.equal(ours, theirs)


def test_family_rules_config_reads_are_spec_fields():
    """model.pos_embed applies to DINOv2 without registers only; MiT's grid rounds up, the others' down."""
    shipped = {name: spec for name, spec in ENCODERS.items() if name not in TINY}
    assert {name for name, spec in shipped.items() if spec.pos_embed_choice} == {
        f"dinov2_{size}" for size in ("small", "base", "large", "giant")}
    assert ENCODERS["mit_b0"].feature_grid(513) == (17, 17)
    assert ENCODERS["dinov3_convnext_tiny"].feature_grid(513) == (16, 16)
    assert ENCODERS["dinov2_small"].feature_grid(518) == (37, 37)
