"""Chunked CPU attention with dropout against plain references that materialise the map (METHODS.md 1.1)."""

import pytest
import torch
import torch.nn.functional as F

from allspark.models import chunked_attention
from allspark.models.allspark import channel_attention
from allspark.models.chunked_attention import chunked_dropout_attention, draw_keep_mask, keep_threshold

N, M, D, P = 7, 5, 3, 0.1


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Two query rows per chunk for M keys: several chunks and a shorter last one."""
    monkeypatch.setattr(chunked_attention, "CHUNK_ENTRIES", 2 * M)


def inputs(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return tuple(torch.randn(rows, D, dtype=dtype, requires_grad=True) for rows in (N, M, M))


def masks_for_seed(seed, rows, cols):
    """The keep mask the function draws after torch.manual_seed(seed): chunk by chunk, 2 rows each."""
    torch.manual_seed(seed)
    threshold = keep_threshold(P)[0]
    return torch.cat([draw_keep_mask(min(2, rows - start), cols, threshold) for start in range(0, rows, 2)])


def test_without_dropout_equals_softmax_attention_values_and_gradcheck():
    q, k, v = inputs()
    torch.testing.assert_close(chunked_dropout_attention(q, k, v, 0.0), (q @ k.T).softmax(-1) @ v)
    assert torch.autograd.gradcheck(lambda *t: chunked_dropout_attention(*t, 0.0), (q, k, v))


def test_dropout_gradients_match_finite_differences_under_a_fixed_seed():
    # backward must use the forward's mask: with the seed reset before each call the function is deterministic
    def seeded(*tensors):
        torch.manual_seed(3)
        return chunked_dropout_attention(*tensors, P)

    assert torch.autograd.gradcheck(seeded, inputs())


def test_dropout_equals_reference_with_the_same_mask_values_and_gradients():
    q, k, v = inputs()
    weights = torch.randn(N, D, dtype=torch.float64)
    torch.manual_seed(5)
    out = chunked_dropout_attention(q, k, v, P)
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
    mask = masks_for_seed(5, N, M)
    assert 0 < mask.sum() < mask.numel()
    keep = keep_threshold(P)[1]
    ref = ((q @ k.T).softmax(-1) * mask / keep) @ v
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for grad, ref_grad in zip(grads, torch.autograd.grad((ref * weights).sum(), (q, k, v))):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_keep_probability_and_empirical_keep_rate():
    threshold, keep = keep_threshold(P)
    assert keep == 58982 / 2**16 and abs(keep - (1 - P)) < 1e-4
    assert keep_threshold(0.5) == (0, 0.5)
    torch.manual_seed(0)
    mask = draw_keep_mask(1000, 2000, threshold)
    assert mask.dtype == torch.bool and set(mask.unique().tolist()) == {False, True}
    sigma = (keep * (1 - keep) / mask.numel()) ** 0.5
    assert abs(mask.double().mean().item() - keep) < 5 * sigma
    assert abs(mask[:, ::4].double().mean().item() - keep) < 10 * sigma  # each 16-bit field of a draw


def test_dropout_rescales_kept_entries_to_the_same_expectation():
    # uniform map (k = 0) and v = 1: each output is (kept entries / m) / keep, mean 1 over many rows
    q = torch.randn(400, D)
    out = chunked_dropout_attention(q, torch.zeros(1000, D), torch.ones(1000, D), P)
    assert abs(out.mean().item() - 1.0) < 5e-3
    assert out.std().item() > 1e-3


def test_deterministic_under_manual_seed():
    q, k, v = inputs(torch.float32)
    runs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        out = chunked_dropout_attention(q, k, v, P)
        runs.append((out, *torch.autograd.grad(out.square().sum(), (q, k, v))))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not torch.equal(runs[0][0], runs[2][0])


def test_channel_attention_uses_it_for_shared_keys_with_dropout():
    # training path on the CPU: softmax(IN(q k^T)) with the chunked mask, for every map of the batch
    torch.manual_seed(0)
    q = torch.randn(2, 1, 4, D, dtype=torch.float64, requires_grad=True)
    k, v = torch.randn(2, 1, 1, M, D, dtype=torch.float64)
    torch.manual_seed(9)
    out = channel_attention(q, k, v, P)
    mask = masks_for_seed(9, 8, M).view(2, 1, 4, M)
    scores = q @ k.mT
    attn = F.instance_norm(scores.view(1, 2, 4, M), eps=1e-5).view_as(scores).softmax(-1)
    torch.testing.assert_close(out, (attn * mask / keep_threshold(P)[1]) @ v, rtol=1e-10, atol=1e-10)


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="dropout_p"):
        chunked_dropout_attention(torch.ones(2, D), torch.ones(3, D), torch.ones(3, D), 1.0)
    with pytest.raises(ValueError, match="2-D CPU"):
        chunked_dropout_attention(torch.ones(1, 2, D), torch.ones(3, D), torch.ones(3, D), P)


def test_backward_inside_a_callers_autocast_keeps_forwards_fp32():
    """A backward called under bf16 autocast (a user's own wrapper) runs as its fp32 forward did, same gradients."""
    q, k, v = (t.detach().float().requires_grad_() for t in inputs())
    torch.manual_seed(0)
    chunked_dropout_attention(q, k, v, P).sum().backward()
    expected = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    torch.manual_seed(0)
    out = chunked_dropout_attention(q, k, v, P)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out.sum().backward()
    assert all(torch.equal(t.grad, e) for t, e in zip((q, k, v), expected))
