"""The decode head's merged computation equals SegFormer's concat -> 1x1 conv written plainly (METHODS.md 1)."""
import torch
import torch.nn.functional as F

from allspark.models.segmenter import DecodeHead


def plain_head(head: DecodeHead, feats) -> torch.Tensor:
    """Per-stage Linear to E, resize to c1, concat c4..c1, 1x1 conv, BN, ReLU, dropout, classifier."""
    size = feats[0].shape[-2:]
    maps = []
    for feat, linear in zip(feats, (head.linear_c1, head.linear_c2, head.linear_c3, head.linear_c4)):
        n, _, h, w = feat.shape
        x = linear(feat.flatten(2).mT).mT.reshape(n, -1, h, w)
        maps.append(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
    x = F.relu(head.fuse_bn(head.fuse(torch.cat(maps[::-1], dim=1))))
    return head.classifier(head.dropout(x))


def test_merged_head_equals_concat_then_conv_with_gradients():
    torch.manual_seed(0)
    head = DecodeHead([4, 6, 8, 10], embed_dim=5, num_classes=3)
    for p in head.parameters():
        torch.nn.init.normal_(p)  # no zero biases or unit norms that could hide a mis-wired block
    feats = [torch.randn(2, c, h, w) for c, (h, w) in zip([4, 6, 8, 10], [(12, 9), (6, 5), (3, 3), (2, 2)])]
    results = []
    for forward in (head, lambda f: plain_head(head, f)):
        head.zero_grad()
        torch.manual_seed(1)  # the same Dropout2d channels in both passes
        out = forward(feats)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in head.parameters()]))
    (merged, grads_merged), (plain, grads_plain) = results
    assert merged.shape == (2, 3, 12, 9)
    torch.testing.assert_close(merged, plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_merged, grads_plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
