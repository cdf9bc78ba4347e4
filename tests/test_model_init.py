"""From-scratch initialisation as the release's (MiT's own init, the head's ConvModule), pretrained untouched."""
import math

import pytest
import torch
from torch import nn

from allspark.encoders.mit import MiTEncoder, mit_config
from allspark.encoders.specs import encoder_spec
from allspark.models import build_model
from allspark.models.segmenter import DecodeHead

CFG = {"encoder": "mit_b0", "num_classes": 4, "crop_size": 64, "ablation": "full"}


def _modules(encoder, kind):
    return [(name, m) for name, m in encoder.named_modules() if isinstance(m, kind)]


def test_encoder_convs_are_drawn_over_fan_out():
    torch.manual_seed(0)
    convs = _modules(MiTEncoder(encoder_spec("mit_b0")), nn.Conv2d)
    # patch embeddings (7x7, 3x3), sequence reductions (8x8, 4x4, 2x2) and the Mix-FFN's depthwise 3x3
    kinds = {(m.kernel_size, m.groups > 1) for _, m in convs}
    assert ((3, 3), True) in kinds and ((7, 7), False) in kinds and ((8, 8), False) in kinds
    for name, conv in convs:
        fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
        expected = math.sqrt(2.0 / fan_out)
        w = conv.weight.detach()
        # the std of n normal draws is within 5 / sqrt(2n) of the truth with overwhelming probability
        tolerance = 5 / math.sqrt(2 * w.numel())
        assert abs(w.std().item() / expected - 1) < tolerance, (name, w.std().item(), expected)
        assert abs(w.mean().item()) < 5 * expected / math.sqrt(w.numel()), name
        assert torch.count_nonzero(conv.bias) == 0, name
    depthwise = next(conv for _, conv in convs if conv.groups > 1)
    assert depthwise.weight.std() > 10 * 0.02  # sqrt(2/9) = 0.47, not transformers' 0.02


def test_encoder_linears_and_norms():
    torch.manual_seed(0)
    encoder = MiTEncoder(encoder_spec("mit_b0"))
    weights = torch.cat([m.weight.detach().flatten() for _, m in _modules(encoder, nn.Linear)])
    assert weights.std().item() == pytest.approx(0.02, rel=0.01)
    assert weights.abs().max() <= 2.0
    assert all(torch.count_nonzero(m.bias) == 0 for _, m in _modules(encoder, nn.Linear))
    norms = _modules(encoder, nn.LayerNorm)
    depths, ratios = mit_config(encoder_spec("mit_b0")).depths, mit_config(encoder_spec("mit_b0")).sr_ratios
    # per stage: its output and patch-embedding norms, two per block, one per block's sequence reduction
    assert len(norms) == sum(2 + 2 * d + (d if r > 1 else 0) for d, r in zip(depths, ratios))
    for name, norm in norms:
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)), name
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias)), name


def test_head_fuse_conv_is_kaiming_over_fan_out():
    torch.manual_seed(0)
    head = DecodeHead([32, 64, 160, 256], embed_dim=256, num_classes=4)
    w = head.fuse.weight.detach()  # (256, 1024, 1, 1)
    assert w.std().item() == pytest.approx(math.sqrt(2.0 / 256), rel=0.02)
    assert torch.equal(head.fuse_bn.weight, torch.ones(256)) and torch.equal(head.fuse_bn.bias, torch.zeros(256))
    # the per-stage linears keep torch's default, as the release's: uniform within 1 / sqrt(fan_in)
    assert head.linear_c4.weight.abs().max() <= 1 / math.sqrt(256)


def test_same_seed_same_initial_model():
    torch.manual_seed(3)
    a = build_model(CFG).state_dict()
    torch.manual_seed(3)
    b = build_model(CFG).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pretrained_encoder_keeps_the_loaded_weights(tmp_path):
    from transformers import SegformerModel

    hf = SegformerModel(mit_config(encoder_spec("mit_b0")))
    with torch.no_grad():
        for i, p in enumerate(hf.parameters()):  # values no random init would draw
            p.fill_(0.25 + i * 1e-3)
    hf.save_pretrained(tmp_path / "mit")
    model = build_model({**CFG, "pretrained": str(tmp_path / "mit")})
    loaded = model.encoder.state_dict()
    for key, value in hf.state_dict().items():
        assert torch.equal(loaded[key], value), key
