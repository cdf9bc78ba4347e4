"""Pretrained weights of the new encoder families from files the tests write: original DINOv2 files (plain,
giant SwiGLU, registers), Hugging Face folders of every family, UniMatch V2 checkpoints (model / model_ema,
`module.`), and the CLI's conversion; every key placed or named."""
import pytest
import torch
import transformers

from allspark.config.schema import ModelConfig
from allspark.encoders.registry import FAMILIES
from allspark.errors import ConfigError, ConversionError
from allspark.models import build_model, load_official
from allspark.models.weights import load_model
from encoder_helpers import TINY, tiny_encoders
from inference_helpers import run_cli

K, C = 3, 32


@pytest.fixture(autouse=True)
def registered():
    with tiny_encoders():
        yield


def original_dinov2(name: str, seed: int = 0) -> dict:
    """Random tensors with the names and shapes of Meta's DINOv2 files (dinov2_vits14_pretrain.pth) for `name`."""
    gen = torch.Generator().manual_seed(seed)
    spec = TINY[name]
    grid = spec.hf["image_size"] // 14
    state = {"cls_token": (1, 1, C), "pos_embed": (1, grid * grid + 1, C), "mask_token": (1, C),
             "patch_embed.proj.weight": (C, 3, 14, 14), "patch_embed.proj.bias": (C,), "norm.weight": (C,),
             "norm.bias": (C,)}
    if "num_register_tokens" in spec.hf:
        state["register_tokens"] = (1, spec.hf["num_register_tokens"], C)
    swiglu = spec.hf.get("use_swiglu_ffn", False)
    hidden = (int(C * 4 * 2 / 3) + 7) // 8 * 8 if swiglu else C * spec.hf.get("mlp_ratio", 4)
    for j in range(spec.hf["num_hidden_layers"]):
        b = f"blocks.{j}"
        state.update({f"{b}.norm1.weight": (C,), f"{b}.norm1.bias": (C,), f"{b}.norm2.weight": (C,),
                      f"{b}.norm2.bias": (C,), f"{b}.attn.qkv.weight": (3 * C, C), f"{b}.attn.qkv.bias": (3 * C,),
                      f"{b}.attn.proj.weight": (C, C), f"{b}.attn.proj.bias": (C,), f"{b}.ls1.gamma": (C,),
                      f"{b}.ls2.gamma": (C,)})
        if swiglu:
            state.update({f"{b}.mlp.w12.weight": (2 * hidden, C), f"{b}.mlp.w12.bias": (2 * hidden,),
                          f"{b}.mlp.w3.weight": (C, hidden), f"{b}.mlp.w3.bias": (C,)})
        else:
            state.update({f"{b}.mlp.fc1.weight": (hidden, C), f"{b}.mlp.fc1.bias": (hidden,),
                          f"{b}.mlp.fc2.weight": (C, hidden), f"{b}.mlp.fc2.bias": (C,)})
    return {key: torch.randn(*shape, generator=gen) for key, shape in state.items()}


def release_dpt_head(seed: int = 0) -> dict:
    """Random tensors with the names and shapes of UniMatch V2's DPTHead for dinov2_tiny's widths (8, 8/8/16/16)."""
    gen = torch.Generator().manual_seed(seed)
    features, widths = TINY["dinov2_tiny"].dpt
    shapes = {}
    for i, width in enumerate(widths):
        shapes[f"projects.{i}.weight"], shapes[f"projects.{i}.bias"] = (width, C, 1, 1), (width,)
        shapes[f"scratch.layer{i + 1}_rn.weight"] = (features, width, 3, 3)
    for i, (k, width) in {0: (4, widths[0]), 1: (2, widths[1]), 3: (3, widths[3])}.items():
        shapes[f"resize_layers.{i}.weight"], shapes[f"resize_layers.{i}.bias"] = (width, width, k, k), (width,)
    for n in range(1, 5):
        r = f"scratch.refinenet{n}"
        shapes[f"{r}.out_conv.weight"], shapes[f"{r}.out_conv.bias"] = (features, features, 1, 1), (features,)
        for unit in ("resConfUnit1", "resConfUnit2"):
            for conv in ("conv1", "conv2"):
                shapes[f"{r}.{unit}.{conv}.weight"] = (features, features, 3, 3)
                shapes[f"{r}.{unit}.{conv}.bias"] = (features,)
    shapes.update({"scratch.output_conv.0.weight": (features, features, 3, 3), "scratch.output_conv.0.bias": (features,),
                   "scratch.output_conv.2.weight": (K, features, 1, 1), "scratch.output_conv.2.bias": (K,)})
    return {f"head.{key}": torch.randn(*shape, generator=gen) for key, shape in shapes.items()}


def unimatch_v2_checkpoint(seed: int = 0) -> dict:
    state = {**{f"backbone.{k}": v for k, v in original_dinov2("dinov2_tiny", seed).items()}, **release_dpt_head(seed)}
    ema = {k: v + 1 for k, v in state.items()}
    return {"model": {f"module.{k}": v for k, v in state.items()},
            "model_ema": {f"module.{k}": v for k, v in ema.items()}, "epoch": 3, "previous_best": 0.5}


def model_cfg(name: str, **extra) -> ModelConfig:
    crop = 4 * TINY[name].patch if TINY[name].is_vit else 64
    return ModelConfig(encoder=name, num_classes=K, crop_size=crop, ablation="none", **extra)


@pytest.mark.parametrize("name", ["dinov2_tiny", "dinov2_giant_tiny", "dinov2_reg_tiny"])
def test_original_dinov2_file_is_converted_on_load(tmp_path, name):
    state = original_dinov2(name)
    torch.save(state, tmp_path / "dinov2_pretrain.pth")
    ours = build_model(model_cfg(name, pretrained=str(tmp_path / "dinov2_pretrain.pth"))).encoder.backbone.state_dict()
    q, k, v = state["blocks.1.attn.qkv.weight"].chunk(3)
    assert torch.equal(ours["encoder.layer.1.attention.q_proj.weight"], q)
    assert torch.equal(ours["encoder.layer.1.attention.v_proj.weight"], v)
    assert torch.equal(ours["encoder.layer.3.layer_scale2.lambda1"], state["blocks.3.ls2.gamma"])
    assert torch.equal(ours["embeddings.position_embeddings"], state["pos_embed"])
    assert torch.equal(ours["layernorm.weight"], state["norm.weight"])
    if "giant" in name:
        gate, up = state["blocks.0.mlp.w12.weight"].chunk(2)
        assert torch.equal(ours["encoder.layer.0.mlp.gate_proj.weight"], gate)
        assert torch.equal(ours["encoder.layer.0.mlp.up_proj.weight"], up)
        assert torch.equal(ours["encoder.layer.0.mlp.down_proj.weight"], state["blocks.0.mlp.w3.weight"])
    if "reg" in name:
        assert torch.equal(ours["embeddings.register_tokens"], state["register_tokens"])


def test_original_dinov2_file_with_a_stray_or_missing_key_is_named(tmp_path):
    state = original_dinov2("dinov2_tiny")
    state["blocks.0.attn.extra.weight"] = torch.zeros(1)
    del state["blocks.2.ls1.gamma"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ConversionError) as err:
        build_model(model_cfg("dinov2_tiny", pretrained=str(tmp_path / "bad.pth")))
    assert "blocks.0.attn.extra.weight" in str(err.value) and "encoder.layer.2.layer_scale1.lambda1" in str(err.value)


@pytest.mark.parametrize("name,model_class", [("dinov2_tiny", "Dinov2Model"), ("dinov2_reg_tiny", "Dinov2WithRegistersModel"),
                                               ("dinov3_vit_tiny", "DINOv3ViTModel"),
                                               ("dinov3_convnext_test", "DINOv3ConvNextModel")])
def test_hugging_face_folder_of_every_family(tmp_path, name, model_class):
    """A folder as the hub holds it (the family's base model, not its backbone class) loads into our encoder."""
    spec = TINY[name]
    config_class = FAMILIES[spec.family].transformers_class.config_class
    torch.manual_seed(1)
    hf = getattr(transformers, model_class)(config_class(**spec.hf))
    hf.save_pretrained(tmp_path / "hub")
    ours = build_model(model_cfg(name, pretrained=str(tmp_path / "hub"))).encoder.backbone
    theirs, mine = hf.state_dict(), ours.state_dict()
    shared = [k for k in theirs if k in mine]
    assert len(shared) >= len(mine) - 1  # every weight (DINOv3 backbones may keep their final norm apart)
    assert all(torch.equal(theirs[k], mine[k]) for k in shared)


def test_hugging_face_folder_of_another_size_is_refused(tmp_path):
    spec = TINY["dinov2_tiny"]
    transformers.Dinov2Model(transformers.Dinov2Config(**{**spec.hf, "hidden_size": 16})).save_pretrained(tmp_path / "hub")
    with pytest.raises(ConfigError, match="hidden_size"):
        build_model(model_cfg("dinov2_tiny", pretrained=str(tmp_path / "hub")))


def test_unimatch_v2_checkpoint_model_and_ema(tmp_path):
    checkpoint = unimatch_v2_checkpoint()
    torch.save(checkpoint, tmp_path / "best.pth")
    for entry, shift in ((None, 0), ("model_ema", 1)):
        model = load_official(tmp_path / "best.pth", model_cfg("dinov2_tiny"), entry=entry)
        ours = model.state_dict()
        source = checkpoint["model"]
        assert torch.equal(ours["head.fusions.3.path_unit.conv2.weight"],
                           source["module.head.scratch.refinenet4.resConfUnit2.conv2.weight"] + shift)
        assert torch.equal(ours["head.refines.0.weight"], source["module.head.scratch.layer1_rn.weight"] + shift)
        assert torch.equal(ours["head.classifier.bias"], source["module.head.scratch.output_conv.2.bias"] + shift)
        assert torch.equal(ours["encoder.backbone.embeddings.cls_token"], source["module.backbone.cls_token"] + shift)


def test_unimatch_v2_checkpoint_with_an_unknown_key_is_named(tmp_path):
    checkpoint = unimatch_v2_checkpoint()
    checkpoint["model"]["module.head.scratch.extra.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match="head.scratch.extra.weight"):
        load_official(checkpoint, model_cfg("dinov2_tiny"))
    with pytest.raises(ConversionError, match="no entry 'teacher'"):
        load_official(unimatch_v2_checkpoint(), model_cfg("dinov2_tiny"), entry="teacher")


def test_convert_official_cli_writes_a_loadable_unimatch_v2_model(tmp_path, capsys):
    torch.save(unimatch_v2_checkpoint(), tmp_path / "best.pth")
    dst = tmp_path / "v2.safetensors"
    code = run_cli(["convert-official", "--entry", "model_ema", str(tmp_path / "best.pth"), str(dst), "method=sup",
                 "model.encoder=dinov2_tiny", f"model.num_classes={K}", "model.crop_size=56"])
    out = capsys.readouterr().out
    assert code == 0 and "refinenet4.resConfUnit1.conv1.weight" in out  # the unread weights are named
    model, cfg = load_model(dst)
    assert cfg.model.encoder == "dinov2_tiny" and model(torch.randn(1, 3, 56, 56)).shape == (1, K, 56, 56)
