"""The bf16 paths that make a CPU step fast, each leaving fp32 bit for bit as it was: the encoders' attention
(encoders/attention.py: explicit products under bf16, agreeing with fp32 SDPA to bf16's precision, forward and
backward) and the segmenter's logits, cast to fp32 before they are resized to the input."""
import pytest
import torch
import torch.nn.functional as F

from allspark.encoders import attention as attention_module
from allspark.encoders.attention import MAX_MAP, NAME, attention
from allspark.encoders.registry import build_encoder
from allspark.encoders.specs import encoder_spec
from allspark.models import build_model


def qkv(shape_q, shape_k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g).to(dtype).requires_grad_() for shape in (shape_q, shape_k, shape_k)]


def transformers_config(encoder):
    return encoder.config if hasattr(encoder, "config") else encoder.backbone.config


@pytest.mark.parametrize("name", ["mit_b0", "dinov2_small"])
def test_encoders_route_attention_here_and_fp32_is_sdpa_bit_for_bit(name):
    torch.manual_seed(0)
    encoder = build_encoder(encoder_spec(name)).eval()
    config = transformers_config(encoder)
    assert config._attn_implementation == NAME
    images = torch.randn(2, 3, 70, 70)
    with torch.no_grad():
        ours = encoder(images)
        config._attn_implementation = "sdpa"
        theirs = encoder(images)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("shape_q,shape_k", [((2, 6, 257, 64), (2, 6, 257, 64)), ((4, 5, 121, 32), (4, 5, 25, 32))])
def test_bf16_takes_explicit_products_close_to_fp32_sdpa(shape_q, shape_k, monkeypatch):
    q32, k32, v32 = qkv(shape_q, shape_k, torch.float32)
    reference = F.scaled_dot_product_attention(q32, k32, v32)
    reference.backward(torch.ones_like(reference))
    q, k, v = (t.detach().bfloat16().requires_grad_() for t in (q32, k32, v32))

    def refuse(*args, **kwargs):
        raise AssertionError("bf16 on the CPU went to SDPA")
    monkeypatch.setattr(attention_module, "sdpa_attention_forward", refuse)
    out, weights = attention(torch.nn.Module(), q, k, v, None)
    assert weights is None and out.dtype == torch.bfloat16 and out.shape == reference.transpose(1, 2).shape
    assert (out.float() - reference.transpose(1, 2)).abs().max() < 0.03
    out.backward(torch.ones_like(out))
    for ours, theirs in ((q, q32), (k, k32), (v, v32)):
        scale = theirs.grad.abs().max()
        assert (ours.grad.float() - theirs.grad).abs().max() < 0.03 * scale


def test_fp32_large_maps_and_causal_attention_go_to_sdpa(monkeypatch):
    calls = []
    monkeypatch.setattr(attention_module, "sdpa_attention_forward", lambda *a, **k: calls.append(a[1].dtype))
    side = int(MAX_MAP ** 0.5) + 1
    causal = torch.nn.Module()
    causal.is_causal = True
    attention(torch.nn.Module(), *qkv((1, 1, 8, 4), (1, 1, 8, 4), torch.float32), None)
    attention(torch.nn.Module(), *qkv((1, 1, side, 4), (1, 1, side, 4), torch.bfloat16), None)
    attention(causal, *qkv((1, 1, 8, 4), (1, 1, 8, 4), torch.bfloat16), None)
    assert calls == [torch.float32, torch.bfloat16, torch.bfloat16]


@pytest.mark.parametrize("encoder,head", [("mit_b0", "segformer"), ("dinov2_small", "dpt")])
def test_bf16_logits_are_resized_in_fp32(encoder, head, monkeypatch):
    model = build_model({"encoder": encoder, "head": head, "num_classes": 3, "crop_size": 56, "ablation": "none"})
    seen = []
    resize = F.interpolate
    monkeypatch.setattr(F, "interpolate", lambda x, *a, **k: seen.append(x.dtype) or resize(x, *a, **k))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.eval()(torch.randn(2, 3, 56, 56))
    assert logits.dtype == torch.float32 and seen[-1] == torch.float32  # the last resize: logits to the input


def test_bf16_channel_attention_normalises_its_maps_in_two_passes(monkeypatch):
    from allspark.models.allspark import channel_attention, instance_normalised
    scores = torch.randn(4, 1, 64, 48) * 3 + 1
    assert torch.allclose(instance_normalised(scores, two_pass=True), instance_normalised(scores), atol=1e-5)
    q, k, v = qkv((2, 1, 64, 36), (2, 1, 64, 36), torch.float32)
    with torch.no_grad():
        fp32 = channel_attention(q, k, v)

        def refuse(*args, **kwargs):
            raise AssertionError("the bf16 path went through var_mean")
        monkeypatch.setattr(torch, "var_mean", refuse)
        bf16 = channel_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert bf16.dtype == torch.float32 and (bf16 - fp32).abs().max() < 0.05 * fp32.abs().max()


def test_long_rows_softmax_in_bf16_equals_the_fp32_softmax_rounded():
    scores = (torch.randn(2, 3, 40, attention_module.LONG_ROWS) * 4).bfloat16()
    direct = torch.softmax(scores, dim=-1)
    rounded = torch.softmax(scores, dim=-1, dtype=torch.float32).bfloat16()
    assert (direct.float() - rounded.float()).abs().max() <= 2 ** -16  # the kernel computes in fp32 and rounds once
