"""The segmenter: encoder sizes, decode head, training and inference paths, weights round trip."""
import pytest
import torch
from torch import nn

from allspark.config.schema import ABLATIONS, Config, ModelConfig
from allspark.encoders.mit import MiTEncoder, mit_config
from allspark.encoders.specs import encoder_spec
from allspark.errors import ConfigError
from allspark.models import AllSparkSegmenter, build_model
from allspark.models.segmenter import DecodeHead
from allspark.models.weights import load_model
from allspark.runs.weights_file import save_weights

# METHODS.md 1 / SegFormer paper, Table 6: stage widths and blocks per stage of each size.
SIZES = {
    "mit_b0": ([32, 64, 160, 256], [2, 2, 2, 2]),
    "mit_b1": ([64, 128, 320, 512], [2, 2, 2, 2]),
    "mit_b2": ([64, 128, 320, 512], [3, 4, 6, 3]),
    "mit_b3": ([64, 128, 320, 512], [3, 4, 18, 3]),
    "mit_b4": ([64, 128, 320, 512], [3, 8, 27, 3]),
    "mit_b5": ([64, 128, 320, 512], [3, 6, 40, 3]),
}
CROP = 64


def tiny_cfg(ablation="none", encoder="mit_b0", **kw) -> ModelConfig:
    return ModelConfig(encoder=encoder, num_classes=5, crop_size=CROP, ablation=ablation, **kw)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_encoder_structure_per_size(name):
    with torch.device("meta"):
        enc = MiTEncoder(encoder_spec(name))
    widths, depths = SIZES[name]
    assert [len(stage.blocks) for stage in enc.stages] == depths
    assert [stage.layer_norm.weight.shape[0] for stage in enc.stages] == widths
    assert [stage.blocks[0].attention.num_attention_heads for stage in enc.stages] == [1, 2, 5, 8]
    assert [stage.blocks[0].attention.sequence_reduction_ratio for stage in enc.stages] == [8, 4, 2, 1]
    assert [stage.patch_embeddings.proj.stride[0] for stage in enc.stages] == [4, 2, 2, 2]
    # stochastic depth rises linearly to 0.1 at the last block; block norms use the original eps 1e-6
    assert enc.stages[-1].blocks[-1].drop_path.drop_prob == pytest.approx(0.1)
    assert enc.stages[0].blocks[0].layernorm_before.eps == 1e-6
    assert mit_config(encoder_spec(name)).drop_path_rate == 0.1


def test_unknown_encoder_is_rejected():
    with pytest.raises(ValueError, match="mit_b9"):
        encoder_spec("mit_b9")


def test_encoder_feature_strides():
    enc = MiTEncoder(encoder_spec("mit_b0")).eval()
    with torch.no_grad():
        feats = enc(torch.randn(1, 3, 96, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 32, 24, 16), (1, 64, 12, 8), (1, 160, 6, 4), (1, 256, 3, 2)]


def test_decode_head_concatenates_c4_first():
    torch.manual_seed(0)
    head = DecodeHead([4, 6, 8, 10], embed_dim=3, num_classes=2).eval()
    with torch.no_grad():
        head.fuse.weight.zero_()
        head.fuse.weight[:, :3] = torch.eye(3)[:, :, None, None]  # keep only the first E inputs
    feats = [torch.randn(1, c, s, s) for c, s in zip([4, 6, 8, 10], [8, 4, 2, 1])]
    base = head(feats)
    changed_c1 = head([feats[0] + 1, *feats[1:]])
    changed_c4 = head([*feats[:3], feats[3] + 1])
    assert torch.equal(base, changed_c1)
    assert not torch.allclose(base, changed_c4)
    assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1


@pytest.mark.parametrize("encoder,embed", [("mit_b0", 256), ("mit_b5", 768)])
def test_inference_shapes(encoder, embed):
    model = build_model(tiny_cfg("full", encoder=encoder)).eval()
    assert model.head.fuse.out_channels == embed
    assert model.allspark.memory.queue.shape == (5, model.encoder.channels[-1], (CROP // 32) ** 2)
    with torch.no_grad():
        logits = model(torch.randn(1, 3, CROP, CROP))
    assert logits.shape == (1, 5, CROP, CROP)


def test_embed_dim_override():
    model = build_model(tiny_cfg(embed_dim=48))
    assert model.head.linear_c4.out_features == 48 and model.head.classifier.in_channels == 48


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_forward_semi_shapes_and_gradients(ablation):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(ablation)).train()
    images_l, images_u = torch.randn(2, 3, CROP, CROP), torch.randn(2, 3, CROP, CROP)
    teacher = torch.randn(2, 5, CROP, CROP)
    logits_l, logits_u = model(images_l, images_u=images_u, teacher_logits_u=teacher, use_memory=ablation != "cca")
    assert logits_l.shape == logits_u.shape == (2, 5, CROP, CROP)
    (logits_l.square().mean() + logits_u.square().mean()).backward()
    parts = [model.encoder, model.head] + ([model.allspark] if model.allspark is not None else [])
    for part in parts:
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert all(g is not None for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("ablation", ["none", "full"])  # cca and cca_mem share full's inference path
def test_inference_is_per_image(ablation):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(ablation)).eval()
    images = torch.randn(3, 3, CROP, CROP)
    with torch.no_grad():
        batch = model(images)
        single = torch.cat([model(images[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)


def test_build_model_accepts_config_modelconfig_and_mapping():
    cfg = Config(method="semi", model=tiny_cfg())
    for source in (cfg, cfg.model, {"encoder": "mit_b0", "num_classes": 5, "crop_size": CROP, "ablation": "none"}):
        model = build_model(source)
        assert isinstance(model, AllSparkSegmenter) and model.head.classifier.out_channels == 5
    with pytest.raises(ConfigError, match="encoder"):
        build_model({"encoder": "resnet50"})
    with pytest.raises(ConfigError, match="num_clases"):
        build_model({"num_clases": 3})


def test_pretrained_from_huggingface_directory(tmp_path):
    from transformers import SegformerModel

    torch.manual_seed(1)
    hf = SegformerModel(mit_config(encoder_spec("mit_b0")))
    hf.save_pretrained(tmp_path / "mit")
    model = build_model(tiny_cfg(pretrained=str(tmp_path / "mit")))
    for key, value in hf.state_dict().items():
        torch.testing.assert_close(model.encoder.state_dict()[key], value, rtol=0, atol=0)


def test_pretrained_directory_with_a_missing_weight_is_rejected(tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import SegformerForImageClassification

    SegformerForImageClassification(mit_config(encoder_spec("mit_b0"))).save_pretrained(tmp_path / "cls")
    build_model(tiny_cfg(pretrained=str(tmp_path / "cls")))  # the classifier is dropped
    weights = tmp_path / "cls" / "model.safetensors"
    state = load_file(weights)
    (dropped,) = [k for k in state if k.endswith("layer_norm.3.bias") or k.endswith("stages.3.layer_norm.bias")]
    del state[dropped]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"stages\.3\.layer_norm\.bias"):
        build_model(tiny_cfg(pretrained=str(tmp_path / "cls")))


def test_pretrained_of_another_size_is_rejected(tmp_path):
    from transformers import SegformerModel

    SegformerModel(mit_config(encoder_spec("mit_b0"))).save_pretrained(tmp_path / "b0")
    with pytest.raises(ValueError, match="mit_b1"):
        build_model(tiny_cfg(encoder="mit_b1", pretrained=str(tmp_path / "b0")))


def test_forward_semi_matches_forward_semi_method():
    torch.manual_seed(0)
    model = build_model(tiny_cfg("full")).eval()  # eval: no dropout, no memory writes
    images_l, images_u = torch.randn(1, 3, CROP, CROP), torch.randn(2, 3, CROP, CROP)
    with torch.no_grad():
        via_call = model(images_l, images_u=images_u, teacher_logits_u=None, use_memory=True)
        direct = model.forward_semi(images_l, images_u, None, True)
        alone = model(images_l)
    for a, b in zip(via_call, direct):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(via_call[0], alone)  # the memory, not the image's own channels, gave the keys


@pytest.mark.parametrize("ablation", ["cca_mem", "full"])
def test_memory_is_read_only_when_asked(ablation):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(ablation)).train()
    images_l, images_u = torch.randn(2, 3, CROP, CROP), torch.randn(2, 3, CROP, CROP)
    teacher = torch.randn(2, 5, CROP, CROP)
    first_memory = model.allspark.memory.queue.clone()

    def run(memory, use_memory):
        model.allspark.memory.queue.copy_(memory)
        torch.manual_seed(1)  # same dropout masks in every run
        with torch.no_grad():
            return model(images_l, images_u=images_u, teacher_logits_u=teacher, use_memory=use_memory)[0]

    other_memory = torch.randn_like(first_memory)
    torch.testing.assert_close(run(first_memory, False), run(other_memory, False), rtol=0, atol=0)
    assert not torch.allclose(run(first_memory, True), run(other_memory, True))
    assert not torch.equal(model.allspark.memory.queue, other_memory)  # training steps write the memory
    model.eval()
    model.allspark.memory.queue.copy_(first_memory)
    with torch.no_grad():
        model(images_l)
        model(images_l, images_u=images_u, teacher_logits_u=teacher, use_memory=False)
    assert torch.equal(model.allspark.memory.queue, first_memory)  # evaluation never writes it


def test_training_crops_must_fit_the_memory():
    """The one crop guard is the bottleneck's: crops of another token grid than the memory's fail in the step."""
    model = build_model(tiny_cfg("full")).train()
    fits = torch.randn(1, 3, CROP - 31, CROP - 31)  # 33 -> ceil(33/32) = 2 tokens per side, as for 64
    model(fits, images_u=fits, teacher_logits_u=torch.randn(1, 5, CROP - 31, CROP - 31), use_memory=True)
    with pytest.raises(ValueError, match=r"built for a 2x2 token grid.*3x3 grid.*model.crop_size"):
        model(torch.randn(1, 3, 96, 96), images_u=torch.randn(1, 3, 96, 96),
              teacher_logits_u=torch.randn(1, 5, 96, 96), use_memory=False)
    build_model(tiny_cfg("cca")).train()(torch.randn(1, 3, 96, 96), images_u=torch.randn(1, 3, 96, 96))


@pytest.mark.parametrize("ablation", ["none", "full"])
def test_weights_round_trip(tmp_path, ablation):
    torch.manual_seed(0)
    cfg = Config(method="semi" if ablation == "none" else "allspark", model=tiny_cfg(ablation))
    model = build_model(cfg).train()
    if ablation != "none":  # a training step moves the memory and its pointers off their initial values
        model(torch.randn(2, 3, CROP, CROP), images_u=torch.randn(2, 3, CROP, CROP),
              teacher_logits_u=torch.randn(2, 5, CROP, CROP), use_memory=False)
        assert model.allspark.memory.ptr.sum() > 0
    model.eval()
    restored = build_model(cfg)
    restored.load_state_dict(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    save_weights(tmp_path / "w.safetensors", model.state_dict(), cfg)
    loaded, loaded_cfg = load_model(tmp_path / "w.safetensors")
    assert loaded_cfg == cfg
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    images = torch.randn(1, 3, CROP, CROP)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))


def test_pretrained_from_our_checkpoint_takes_its_encoder_only(tmp_path):
    """A SupBaseline run's weights file initialises the encoder of an AllSpark model (fine-tuning)."""
    torch.manual_seed(2)
    sup = build_model(tiny_cfg("none"))
    save_weights(tmp_path / "sup.safetensors", sup.state_dict(), Config(method="sup", model=tiny_cfg("none")))
    torch.manual_seed(3)
    model = build_model(tiny_cfg("full", pretrained=str(tmp_path / "sup.safetensors")))
    for key, value in sup.encoder.state_dict().items():
        torch.testing.assert_close(model.encoder.state_dict()[key], value, rtol=0, atol=0)
    assert not torch.equal(model.head.classifier.weight, sup.head.classifier.weight)


def test_pretrained_from_a_checkpoint_with_other_classes(tmp_path):
    """An encoder pretrained on another labeled set (here 7 classes) starts a 4-class model; its head is left out."""
    torch.manual_seed(2)
    source_cfg = ModelConfig(encoder="mit_b0", num_classes=7, crop_size=CROP, ablation="none")
    source = build_model(source_cfg)
    save_weights(tmp_path / "source.safetensors", source.state_dict(), Config(method="sup", model=source_cfg))
    model = build_model(ModelConfig(encoder="mit_b0", num_classes=4, crop_size=CROP, ablation="full",
                                    pretrained=str(tmp_path / "source.safetensors")))
    for key, value in source.encoder.state_dict().items():
        torch.testing.assert_close(model.encoder.state_dict()[key], value, rtol=0, atol=0)
    assert model.head.classifier.weight.shape[0] == 4 and source.head.classifier.weight.shape[0] == 7


def test_load_model_never_reads_the_pretrained_source(tmp_path):
    """A weights file holds every weight: a `model.pretrained` that no longer exists (or a hub id offline) is not read."""
    cfg = Config(method="semi", model=tiny_cfg("none", pretrained=str(tmp_path / "gone" / "mit_b0.pth")))
    model = AllSparkSegmenter(cfg.model)
    save_weights(tmp_path / "w.safetensors", model.state_dict(), cfg)
    loaded, loaded_cfg = load_model(tmp_path / "w.safetensors")
    assert loaded_cfg.model.pretrained == cfg.model.pretrained
    assert torch.equal(loaded.head.classifier.weight, model.head.classifier.weight)
    with pytest.raises(ConfigError, match="model.pretrained"):
        build_model(cfg)  # training reads it
