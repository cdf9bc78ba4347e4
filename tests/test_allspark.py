"""AllSpark bottleneck against a plain reference that materialises every map (METHODS.md 1.1, 1.3)."""

import pytest
import torch
import torch.nn.functional as F

from allspark.models.allspark import AllSparkBottleneck, channel_attention, enqueue_sequential, group_channels

C, K, GRID, B = 8, 3, (3, 4), 2


def ref_softmax_in(scores):
    """IN over the whole map (eps 1e-5, no affine), then softmax over keys."""
    return F.instance_norm(scores[None, None], eps=1e-5)[0, 0].softmax(-1)


def ref_unlabeled(attn, x):
    """Per image, per head: A = softmax(IN(q_h^T k_h)); head h's channel c goes to out_u input c*H + h."""
    heads, c = attn.heads, x.shape[-1]
    outs = []
    for image in x:
        q, k, v = image @ attn.q_u.weight.T, image @ attn.k_u.weight.T, image @ attn.v_u.weight.T  # (d, C*H)
        out = torch.zeros_like(q)
        for h in range(heads):
            cols = slice(h * c, (h + 1) * c)
            a = ref_softmax_in(q[:, cols].T @ k[:, cols])  # (C, C)
            out[:, h::heads] = (a @ v[:, cols].T).T
        outs.append(out @ attn.out_u.weight.T)
    return torch.stack(outs)


def ref_labeled(attn, x, sources):
    """Each image's C*H query channels against the key channels of every source (d, C), source-major."""
    k = torch.cat([s @ attn.k_l.weight.T for s in sources], dim=1)  # (d, |S|*C*H)
    v = torch.cat([s @ attn.v_l.weight.T for s in sources], dim=1)
    outs = []
    for image in x:
        q = image @ attn.q_l.weight.T  # (d, C*H)
        m = ref_softmax_in(q.T @ k)  # (C*H, |S|*C*H)
        outs.append((m @ v.T).T @ attn.out_l.weight.T)
    return torch.stack(outs)


def ref_block(model, x, attend):
    """map_in -> tokens -> LN -> attend -> residual -> LN -> map_out, with attend(normed tokens)."""
    tokens = model.map_in(x).flatten(2).transpose(1, 2)  # (N, d, C)
    y = model.out_norm(attend(model.attn_norm(tokens)) + tokens)
    return model.map_out(y.transpose(1, 2).reshape(x.shape))


def ref_forward_semi(model, x_l, x_u, memory_queue=None):
    norm_u = model.attn_norm(model.map_in(x_u).flatten(2).transpose(1, 2))
    sources = list(norm_u) if memory_queue is None else [slot.T for slot in memory_queue]
    y_l = ref_block(model, x_l, lambda n: ref_labeled(model.attn, n, sources))
    y_u = ref_block(model, x_u, lambda n: ref_unlabeled(model.attn, n))
    return y_l, y_u


def ref_forward(model, x):
    return ref_block(model, x, lambda n: torch.cat([ref_labeled(model.attn, n[i:i + 1], [n[i]]) for i in range(len(n))]))


def make(heads=2, fast=True, ablation="full", dropout=0.1, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = AllSparkBottleneck(C, K, GRID, heads=heads, ablation=ablation, dropout=dropout, fast=fast).to(dtype)
    x_l, x_u = torch.randn(2, B, C, *GRID, dtype=dtype)
    logits = torch.randn(B, K, GRID[0] * 32, GRID[1] * 32, dtype=dtype)
    return model, x_l, x_u, logits


@pytest.mark.parametrize("use_memory", [False, True])
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("heads", [1, 2])
def test_semi_matches_reference(heads, fast, use_memory):
    """Keys from the unlabeled batch (before S-Mem) or from the memory slots (after)."""
    model, x_l, x_u, _ = make(heads, fast)
    model.eval()
    y_l, y_u = model.forward_semi(x_l, x_u, None, use_memory=use_memory)
    r_l, r_u = ref_forward_semi(model, x_l, x_u, model.memory.queue if use_memory else None)
    torch.testing.assert_close(y_u, r_u, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y_l, r_l, rtol=1e-4, atol=1e-5)
    assert y_l.shape == x_l.shape and y_u.shape == x_u.shape


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("heads", [1, 2])
def test_inference_matches_reference_and_is_per_image(heads, fast):
    model, x_l, x_u, _ = make(heads, fast)
    model.eval()
    x = torch.cat([x_l, x_u])
    y = model(x)
    torch.testing.assert_close(y, ref_forward(model, x), rtol=1e-4, atol=1e-5)
    alone = torch.cat([model(x[i:i + 1]) for i in range(len(x))])
    torch.testing.assert_close(y, alone, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(model(x), y, rtol=1e-4, atol=1e-5)
    other_size = torch.randn(1, C, 5, 7)
    assert model(other_size).shape == other_size.shape


@pytest.mark.parametrize("grouping", ["probs", "logits"])
def test_training_step_writes_memory_then_attends_to_it(grouping):
    model, x_l, x_u, logits = make(dropout=0.0)
    model.grouping = grouping
    model.train()
    queue, ptr = model.memory.queue.clone(), model.memory.ptr.clone()
    y_l, y_u = model.forward_semi(x_l, x_u, logits, use_memory=True)
    with torch.no_grad():
        norm_u = model.attn_norm(model.map_in(x_u).flatten(2).transpose(1, 2))
        classes = group_channels(norm_u, logits, GRID, probs=grouping == "probs")
        enqueue_sequential(queue, ptr, norm_u.transpose(1, 2), classes)
        r_l, r_u = ref_forward_semi(model, x_l, x_u, queue)
    torch.testing.assert_close(model.memory.queue, queue)
    assert torch.equal(model.memory.ptr, ptr)
    torch.testing.assert_close(y_l, r_l, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y_u, r_u, rtol=1e-4, atol=1e-5)


def _grads(model, outputs, weights):
    model.zero_grad()
    sum((o * w).sum() for o, w in zip(outputs, weights)).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("use_memory", [False, True])
def test_fast_gradients_match_reference_float64(heads, use_memory):
    model, x_l, x_u, _ = make(heads, dtype=torch.float64)
    model.eval()
    weights = torch.randn(2, *x_l.shape, dtype=torch.float64)
    fast = _grads(model, model.forward_semi(x_l, x_u, None, use_memory=use_memory), weights)
    ref = _grads(model, ref_forward_semi(model, x_l, x_u, model.memory.queue if use_memory else None), weights)
    assert fast.keys() == ref.keys() == {name for name, _ in model.named_parameters()}
    for name in ref:
        torch.testing.assert_close(fast[name], ref[name], rtol=1e-8, atol=1e-10, msg=name)
    x = torch.cat([x_l, x_u]).requires_grad_()
    (g_fast,) = torch.autograd.grad((model(x) * weights[0].repeat(2, 1, 1, 1)).sum(), x)
    (g_ref,) = torch.autograd.grad((ref_forward(model, x) * weights[0].repeat(2, 1, 1, 1)).sum(), x)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-8, atol=1e-10)


def test_map_statistics_survive_a_large_mean():
    """The Gram-based std has no E[S^2] - mean^2 cancellation: a map with mean/std ~ 1e3 still matches."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, 1, 6, 20, dtype=torch.float64).unbind(0)
    q, k = q + 30.0, k + 30.0
    fast = channel_attention(q.float(), k.float(), v.float())
    torch.testing.assert_close(fast.double(), channel_attention(q, k, v, fast=False), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ablation", ["cca", "cca_mem", "full"])
def test_gradients_reach_the_parameters_each_path_uses(ablation):
    model, x_l, x_u, logits = make(ablation=ablation)
    model.train()
    for use_memory in (False, True):
        model.zero_grad()
        y_l, y_u = model.forward_semi(x_l, x_u, logits, use_memory=use_memory)
        (y_l.square().mean() + y_u.square().mean()).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    model.zero_grad()
    model(x_l).square().mean().backward()
    unused = {name for name, p in model.named_parameters() if p.grad is None}
    assert unused == {f"attn.{p}_u.weight" for p in ("q", "k", "v", "out")}


def test_attention_runs_in_fp32_under_autocast():
    model, x_l, x_u, _ = make()
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.forward_semi(x_l, x_u, None, use_memory=True) + (model(x_l),)
        q = torch.randn(1, 1, 4, 6, dtype=torch.bfloat16)
        assert channel_attention(q, q, q).dtype == torch.float32
    high = model.forward_semi(x_l, x_u, None, use_memory=True) + (model(x_l),)
    for lo, hi in zip(low, high):
        assert torch.isfinite(lo).all()
        torch.testing.assert_close(lo.float(), hi, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("ablation", ["cca", "cca_mem", "full"])
def test_memory_changes_the_output_only_when_used(ablation):
    model, x_l, x_u, _ = make(ablation=ablation)
    model.eval()
    without = model.forward_semi(x_l, x_u, None, use_memory=False)
    with_memory = model.forward_semi(x_l, x_u, None, use_memory=True)
    assert torch.equal(without[1], with_memory[1])
    assert torch.equal(without[0], with_memory[0]) == (ablation == "cca")


@pytest.mark.parametrize("crop, grid", [(513, (17, 17)), (512, (16, 16)), (161, (6, 6)), (801, (26, 26)), (64, (2, 2))])
def test_tokens_for_crop(crop, grid):
    assert AllSparkBottleneck.tokens_for_crop(crop) == grid


@pytest.mark.parametrize("ablation, train, use_memory, raises", [
    ("full", True, False, True), ("cca_mem", True, False, True), ("full", False, True, True),
    ("full", False, False, False), ("cca", True, True, False)])
def test_token_grid_must_match_the_memory(ablation, train, use_memory, raises):
    model, _, _, _ = make(ablation=ablation)
    model.train(train)
    x = torch.randn(B, C, 4, 4)
    logits = torch.randn(B, K, 128, 128)
    if raises:
        with pytest.raises(ValueError, match=r"3x4 token grid \(d=12, training crop 65\.\.96\).*4x4 grid"):
            model.forward_semi(x, x, logits, use_memory=use_memory)
    else:
        assert model.forward_semi(x, x, logits, use_memory=use_memory)[0].shape == x.shape


def test_state_dict_names_and_buffers():
    model, *_ = make()
    state = model.state_dict()
    expected = {"map_in.0.weight", "map_in.0.bias", "attn_norm.weight", "attn_norm.bias", "out_norm.weight",
                "out_norm.bias", "map_out.0.weight", "map_out.0.bias", "memory.queue", "memory.ptr"}
    expected |= {f"attn.{p}_{b}.weight" for p in ("q", "k", "v", "out") for b in ("u", "l")}
    assert set(state) == expected
    assert state["memory.queue"].shape == (K, C, GRID[0] * GRID[1]) and state["memory.ptr"].dtype == torch.long
    assert model.attn.q_u.weight.shape == (2 * C, C) and model.attn.out_l.weight.shape == (C, 2 * C)
    assert model.attn_norm.eps == model.out_norm.eps == 1e-6


@pytest.mark.parametrize("kwargs", [{"ablation": "none"}, {"grouping": "argmax"}])
def test_rejects_unknown_options(kwargs):
    with pytest.raises(ValueError, match="must be one of"):
        AllSparkBottleneck(C, K, GRID, **kwargs)
