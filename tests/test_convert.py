"""Conversion of original MiT (`mit_bX.pth`) and release (ModelBuilder) checkpoints, and the CLI."""
import re

import pytest
import torch

from allspark.cli import main
from allspark.config.schema import Config, ModelConfig
from allspark.errors import ConversionError
from allspark.models import build_model, load_official

from allspark.models.weights import load_model

CROP = 64
B0_WIDTHS, B0_DEPTHS, SR_RATIOS = [32, 64, 160, 256], [2, 2, 2, 2], [8, 4, 2, 1]


def original_mit_b0(seed=0) -> dict:
    """A random state dict with the key names and shapes of SegFormer's original `mit_b0.pth`."""
    gen = torch.Generator().manual_seed(seed)
    state = {}

    def add(name, *shape):
        state[name] = torch.randn(*shape, generator=gen)

    c_in = 3
    for n, (c, depth, r) in enumerate(zip(B0_WIDTHS, B0_DEPTHS, SR_RATIOS), start=1):
        k = 7 if n == 1 else 3
        add(f"patch_embed{n}.proj.weight", c, c_in, k, k)
        add(f"patch_embed{n}.proj.bias", c)
        add(f"patch_embed{n}.norm.weight", c)
        add(f"patch_embed{n}.norm.bias", c)
        for j in range(depth):
            block = f"block{n}.{j}"
            for norm in ("norm1", "norm2"):
                add(f"{block}.{norm}.weight", c)
                add(f"{block}.{norm}.bias", c)
            add(f"{block}.attn.q.weight", c, c)
            add(f"{block}.attn.q.bias", c)
            add(f"{block}.attn.kv.weight", 2 * c, c)
            add(f"{block}.attn.kv.bias", 2 * c)
            add(f"{block}.attn.proj.weight", c, c)
            add(f"{block}.attn.proj.bias", c)
            if r > 1:
                add(f"{block}.attn.sr.weight", c, c, r, r)
                add(f"{block}.attn.sr.bias", c)
                add(f"{block}.attn.norm.weight", c)
                add(f"{block}.attn.norm.bias", c)
            add(f"{block}.mlp.fc1.weight", 4 * c, c)
            add(f"{block}.mlp.fc1.bias", 4 * c)
            add(f"{block}.mlp.dwconv.dwconv.weight", 4 * c, 1, 3, 3)
            add(f"{block}.mlp.dwconv.dwconv.bias", 4 * c)
            add(f"{block}.mlp.fc2.weight", c, 4 * c)
            add(f"{block}.mlp.fc2.bias", c)
        add(f"norm{n}.weight", c)
        add(f"norm{n}.bias", c)
        c_in = c
    add("head.weight", 1000, B0_WIDTHS[-1])
    add("head.bias", 1000)
    return state


def tiny_cfg(pretrained=None, **kw) -> ModelConfig:
    return ModelConfig(encoder="mit_b0", num_classes=5, crop_size=CROP, ablation="full", pretrained=pretrained, **kw)


def test_mit_pth_loads_into_the_encoder(tmp_path):
    state = original_mit_b0()
    torch.save(state, tmp_path / "mit_b0.pth")
    enc = build_model(tiny_cfg(str(tmp_path / "mit_b0.pth"))).encoder.state_dict()
    kv = state["block2.1.attn.kv.weight"]  # (2C, C): k rows first, then v rows
    assert torch.equal(enc["stages.1.blocks.1.attention.k_proj.weight"], kv[:64])
    assert torch.equal(enc["stages.1.blocks.1.attention.v_proj.weight"], kv[64:])
    assert torch.equal(enc["stages.0.blocks.0.attention.k_proj.bias"], state["block1.0.attn.kv.bias"][:32])
    assert torch.equal(enc["stages.0.blocks.1.attention.sequence_reduction.sequence_reduction.weight"],
                       state["block1.1.attn.sr.weight"])
    assert torch.equal(enc["stages.2.blocks.0.attention.o_proj.weight"], state["block3.0.attn.proj.weight"])
    assert torch.equal(enc["stages.3.layer_norm.weight"], state["norm4.weight"])
    assert torch.equal(enc["stages.0.patch_embeddings.layer_norm.bias"], state["patch_embed1.norm.bias"])
    assert torch.equal(enc["stages.3.blocks.1.layernorm_after.weight"], state["block4.1.norm2.weight"])


def test_mit_pth_unknown_missing_and_misshapen_keys_are_listed(tmp_path):
    state = original_mit_b0()
    state["block1.0.attn.extra.weight"] = torch.zeros(1)
    del state["norm4.bias"]
    torch.save({"state_dict": state}, tmp_path / "bad.pth")
    with pytest.raises(ConversionError) as err:
        build_model(tiny_cfg(str(tmp_path / "bad.pth")))
    message = str(err.value)
    assert "bad.pth" in message and "block1.0.attn.extra.weight" in message and "stages.3.layer_norm.bias" in message

    torch.save(original_mit_b0(), tmp_path / "b0.pth")  # another size: named instead of every misshapen key
    with pytest.raises(ConversionError, match=re.escape("holds mit_b0 weights (mit family; keys such as "
                                                        "patch_embed1.proj.weight")):
        build_model(ModelConfig(encoder="mit_b1", num_classes=5, crop_size=CROP, pretrained=str(tmp_path / "b0.pth")))


# Our names -> the release's (ModelBuilder: backbone = original MiT, decoder = SemiDecoder), written out
# independently of the converter's rules.
RELEASE_DECODER = {
    "allspark.map_in.0.": "decoder.allspark.map_in.0.",
    "allspark.map_out.0.": "decoder.allspark.map_out.0.",
    "allspark.attn_norm.": "decoder.allspark.attn_norm.",
    "allspark.out_norm.": "decoder.allspark.encoder_norm.",
    "allspark.attn.q_u.": "decoder.allspark.attn.q_u.",
    "allspark.attn.k_u.": "decoder.allspark.attn.k_u.",
    "allspark.attn.v_u.": "decoder.allspark.attn.v_u.",
    "allspark.attn.out_u.": "decoder.allspark.attn.out_u.",
    "allspark.attn.q_l.": "decoder.allspark.attn.q_l2u.",
    "allspark.attn.k_l.": "decoder.allspark.attn.k_l2u.",
    "allspark.attn.v_l.": "decoder.allspark.attn.v_l2u.",
    "allspark.attn.out_l.": "decoder.allspark.attn.out_l2u.",
    "allspark.memory.queue": "decoder.allspark.attn.kv_queue",
    "allspark.memory.ptr": "decoder.allspark.attn.queue_ptr",
    "head.linear_c1.": "decoder.decoder.linear_c1.proj.",
    "head.linear_c2.": "decoder.decoder.linear_c2.proj.",
    "head.linear_c3.": "decoder.decoder.linear_c3.proj.",
    "head.linear_c4.": "decoder.decoder.linear_c4.proj.",
    "head.fuse.": "decoder.decoder.linear_fuse.conv.",
    "head.fuse_bn.": "decoder.decoder.linear_fuse.bn.",
    "head.classifier.": "decoder.decoder.linear_pred.",
}
BLOCK_PARTS = {
    "layernorm_before": "norm1", "layernorm_after": "norm2", "attention.q_proj": "attn.q",
    "attention.o_proj": "attn.proj", "attention.sequence_reduction.sequence_reduction": "attn.sr",
    "attention.sequence_reduction.layer_norm": "attn.norm", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
}


def release_state(model) -> dict:
    """`model`'s weights under the release's names, k and v stacked back into `attn.kv`."""
    out, kv = {}, {}
    for key, value in model.state_dict().items():
        if key.startswith("encoder."):
            parts = key.split(".")  # encoder stages N ...
            n, rest, leaf = int(parts[2]) + 1, ".".join(parts[3:-1]), parts[-1]
            if rest == "patch_embeddings.proj":
                out[f"backbone.patch_embed{n}.proj.{leaf}"] = value
            elif rest == "patch_embeddings.layer_norm":
                out[f"backbone.patch_embed{n}.norm.{leaf}"] = value
            elif rest == "layer_norm":
                out[f"backbone.norm{n}.{leaf}"] = value
            else:
                j, inner = parts[4], ".".join(parts[5:-1])
                if inner in ("attention.k_proj", "attention.v_proj"):
                    kv.setdefault(f"backbone.block{n}.{j}.attn.kv.{leaf}", {})[inner[-6]] = value
                else:
                    out[f"backbone.block{n}.{j}.{BLOCK_PARTS[inner]}.{leaf}"] = value
            continue
        (ours,) = [p for p in RELEASE_DECODER if key.startswith(p)]
        out[RELEASE_DECODER[ours] + key[len(ours):]] = value
    for key, halves in kv.items():
        out[key] = torch.cat([halves["k"], halves["v"]])
    return out


@pytest.fixture(scope="module")
def trained_model():
    """A tiny AllSpark segmenter after one training step (BN statistics and memory moved)."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    model(torch.randn(2, 3, CROP, CROP), images_u=torch.randn(2, 3, CROP, CROP),
          teacher_logits_u=torch.randn(2, 5, CROP, CROP), use_memory=False)
    return model.eval()


def assert_same_model(a, b):
    for key, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], value), key
    images = torch.randn(2, 3, CROP, CROP)
    with torch.no_grad():
        torch.testing.assert_close(b.eval()(images), a(images), rtol=0, atol=0)


def test_release_checkpoint_with_module_prefix_and_model_wrapper(tmp_path, trained_model):
    state = {f"module.{k}": v for k, v in release_state(trained_model).items()}
    assert "module.decoder.allspark.attn.kv_queue" in state and "module.backbone.block1.0.attn.kv.weight" in state
    torch.save({"model": state, "epoch": 3}, tmp_path / "best.pth")
    assert_same_model(trained_model, load_official(tmp_path / "best.pth", tiny_cfg()))


def test_release_state_dict_in_memory_and_state_dict_wrapper(trained_model):
    state = release_state(trained_model)
    assert_same_model(trained_model, load_official(state, tiny_cfg()))
    assert_same_model(trained_model, load_official({"state_dict": state}, Config(model=tiny_cfg())))


def test_release_unconsumed_and_missing_keys_are_listed(trained_model):
    state = release_state(trained_model)
    state["decoder.allspark.attn.temperature"] = torch.ones(1)
    del state["decoder.decoder.linear_fuse.bn.num_batches_tracked"]
    del state["backbone.block3.1.attn.kv.weight"]
    with pytest.raises(ConversionError) as err:
        load_official(state, tiny_cfg())
    message = str(err.value)
    for name in ("decoder.allspark.attn.temperature", "head.fuse_bn.num_batches_tracked",
                 "encoder.stages.2.blocks.1.attention.k_proj.weight",
                 "encoder.stages.2.blocks.1.attention.v_proj.weight"):
        assert name in message


def test_release_shapes_that_disagree_with_the_config_are_named(trained_model):
    state = release_state(trained_model)
    with pytest.raises(ConversionError, match=re.escape("decoder.decoder.linear_pred.weight: checkpoint (5, 256, 1, 1) "
                                                        "vs model (6, 256, 1, 1)")):
        load_official(state, ModelConfig(encoder="mit_b0", num_classes=6, crop_size=CROP))
    with pytest.raises(ConversionError, match=re.escape("decoder.allspark.attn.kv_queue: checkpoint (5, 256, 4) "
                                                        "vs model (5, 256, 289)")):
        load_official(state, ModelConfig(encoder="mit_b0", num_classes=5, crop_size=513))


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(ConversionError, match="junk.pth"):
        load_official(tmp_path / "junk.pth", tiny_cfg())
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_official(tmp_path / "absent.pth", tiny_cfg())


def test_convert_official_cli(tmp_path, trained_model, capsys):
    torch.save({"model": {f"module.{k}": v for k, v in release_state(trained_model).items()}}, tmp_path / "r.pth")
    dst = tmp_path / "out.safetensors"
    args = ["convert-official", str(tmp_path / "r.pth"), str(dst),
            "model.encoder=mit_b0", "model.num_classes=5", f"model.crop_size={CROP}"]

    def run(argv):
        with pytest.raises(SystemExit) as code:
            main(argv)
        return code.value.code

    assert run(args) == 0
    model, cfg = load_model(dst)
    assert cfg.model.num_classes == 5 and cfg.model.crop_size == CROP
    assert_same_model(trained_model, model)

    assert run(args) == 1
    assert "--force" in capsys.readouterr().err
    assert run(args + ["--force"]) == 0

    assert run(args[:3] + ["model.num_classes=7", "--force"]) == 1
    err = capsys.readouterr().err
    assert "decoder.decoder.linear_pred.weight" in err and "(5, 256, 1, 1)" in err and "(7, 256, 1, 1)" in err
    assert run(args + ["model.encoder=mit_b9", "--force"]) == 2


def test_published_checkpoint_layout_gets_an_explanation(trained_model):
    state = release_state(trained_model)
    state["decoder.allspark.embeddings.patch_embeddings.weight"] = torch.zeros(1)
    state["decoder.allspark.encoder.layer.0.attn_norm1.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match="earlier layout.*issue #3"):
        load_official(state, tiny_cfg())
