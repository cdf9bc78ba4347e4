"""Semantic Memory and Channel-wise Semantic Grouping against plain references (METHODS.md 1.2, 5)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from allspark.models.allspark import (AllSparkBottleneck, enqueue, enqueue_sequential, gather_from_ranks,
                                      group_channels)

C, K, GRID, B = 6, 4, (2, 3), 2


def test_sequential_reference_on_a_worked_example():
    """METHODS.md 1.2 by hand: K=2 rings of 3 slots, ptr [2, 0]; image 0 classes [0, 1, 0], image 1 all class 0."""
    channels = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])[..., None]  # (B, C, d=1)
    classes = torch.tensor([[0, 1, 0], [0, 0, 0]])
    for write in (enqueue_sequential, enqueue):
        queue, ptr = torch.zeros(2, 3, 1), torch.tensor([2, 0])
        write(queue, ptr, channels, classes)
        assert queue[..., 0].tolist() == [[6.0, 4.0, 5.0], [2.0, 0.0, 0.0]], write.__name__
        assert ptr.tolist() == [1, 1], write.__name__


def _classes(case, batch, gen):
    if case == "random":
        return torch.randint(0, K, (batch, C), generator=gen)
    if case == "overflow":  # class 1 gets more than C channels in one step (3 laps for 3 images), class 3 two
        classes = torch.full((batch, C), 1)
        classes[0, :2] = 3
        return classes
    return torch.randint(0, 2, (batch, C), generator=gen) * 2  # classes 1 and 3 receive nothing


@pytest.mark.parametrize("case, batch", [("random", 2), ("random", 5), ("overflow", 2), ("overflow", 3),
                                         ("empty_classes", 2)])
def test_vectorised_enqueue_equals_sequential_fifo(case, batch):
    gen = torch.Generator().manual_seed(0)
    queue = torch.randn(K, C, 5, generator=gen)
    ptr = torch.randint(0, C, (K,), generator=gen)
    ref_queue, ref_ptr = queue.clone(), ptr.clone()
    for _ in range(4):  # successive steps wrap around every ring
        channels = torch.randn(batch, C, 5, generator=gen)
        classes = _classes(case, batch, gen)
        enqueue(queue, ptr, channels, classes)
        enqueue_sequential(ref_queue, ref_ptr, channels, classes)
        assert torch.equal(queue, ref_queue)
        assert torch.equal(ptr, ref_ptr)


def test_enqueue_on_a_single_ring_view_updates_the_buffers():
    """cca_mem: the K*C slots as one ring, pointer in ptr[0], through views of the real buffers."""
    gen = torch.Generator().manual_seed(1)
    queue, ptr = torch.randn(K, C, 5, generator=gen), torch.tensor([K * C - 2, 0, 0, 0])
    ref_queue, ref_ptr = queue.clone(), ptr.clone()
    channels, classes = torch.randn(B, C, 5, generator=gen), torch.zeros(B, C, dtype=torch.long)
    enqueue(queue.view(1, K * C, 5), ptr[:1], channels, classes)
    enqueue_sequential(ref_queue.view(1, K * C, 5), ref_ptr[:1], channels, classes)
    assert torch.equal(queue, ref_queue) and torch.equal(ptr, ref_ptr)
    assert ptr.tolist() == [(K * C - 2 + B * C) % (K * C), 0, 0, 0]


def ref_group(x_u, logits, grid, probs):
    """Per image and channel: argmax over classes of the cosine similarity with the class's token map."""
    maps = logits.softmax(1) if probs else logits
    tokens = F.interpolate(maps, size=grid, mode="bilinear", align_corners=False).flatten(2)  # (B, K, d)
    out = torch.empty(x_u.shape[0], x_u.shape[2], dtype=torch.long)
    for b in range(x_u.shape[0]):
        for c in range(x_u.shape[2]):
            sims = torch.stack([F.cosine_similarity(tokens[b, k], x_u[b, :, c], dim=0) for k in range(len(tokens[b]))])
            out[b, c] = sims.argmax()
    return out


@pytest.mark.parametrize("probs", [True, False])
def test_grouping_picks_the_class_whose_map_matches_the_channel(probs):
    """Class k is confident on token region k; channel c is region target[c]'s indicator, scaled and noised."""
    d = GRID[0] * GRID[1]
    regions = torch.arange(d) % K  # (d,) region of each token
    logits = 8.0 * (regions[None] == torch.arange(K)[:, None]).float().view(1, K, *GRID).repeat(B, 1, 1, 1)
    target = torch.randint(0, K, (B, C), generator=torch.Generator().manual_seed(0))
    x_u = (regions[None, :, None] == target[:, None, :]).float() * (torch.rand(B, 1, C) * 3 + 0.5)
    x_u = x_u + 0.01 * torch.randn(B, d, C)
    assert torch.equal(group_channels(x_u, logits, GRID, probs=probs), target)


def test_probabilities_and_logits_can_group_differently():
    gen = torch.Generator().manual_seed(0)
    x_u = torch.randn(B, GRID[0] * GRID[1], 64, generator=gen)
    logits = 3 * torch.randn(B, K, 50, 70, generator=gen)
    by_probs = group_channels(x_u, logits, GRID, probs=True)
    by_logits = group_channels(x_u, logits, GRID, probs=False)
    assert torch.equal(by_probs, ref_group(x_u, logits, GRID, probs=True))
    assert torch.equal(by_logits, ref_group(x_u, logits, GRID, probs=False))
    assert (by_probs != by_logits).any()


def make(ablation, seed=0):
    torch.manual_seed(seed)
    model = AllSparkBottleneck(C, K, GRID, ablation=ablation)
    x_l, x_u = torch.randn(2, B, C, *GRID)
    return model, x_l, x_u, torch.randn(B, K, 64, 96)


@pytest.mark.parametrize("ablation", ["cca", "cca_mem", "full"])
@pytest.mark.parametrize("train", [True, False])
def test_memory_written_only_in_training_by_memory_ablations(ablation, train):
    model, x_l, x_u, logits = make(ablation)
    model.train(train)
    before = {k: v.clone() for k, v in model.memory.state_dict().items()}
    model.forward_semi(x_l, x_u, logits, use_memory=False)
    changed = not torch.equal(before["queue"], model.memory.queue)
    assert changed == (train and ablation != "cca")


@pytest.mark.parametrize("ablation", ["cca_mem", "full"])
def test_module_writes_the_sequential_fifo(ablation):
    model, x_l, x_u, logits = make(ablation)
    model.train()
    queue, ptr = model.memory.queue.clone(), model.memory.ptr.clone()
    for _ in range(3):
        model.forward_semi(x_l, x_u, logits, use_memory=True)
        with torch.no_grad():
            norm_u = model.attn_norm(model.map_in(x_u).flatten(2).transpose(1, 2))  # (B, d, C)
        if ablation == "full":
            enqueue_sequential(queue, ptr, norm_u.transpose(1, 2), ref_group(norm_u, logits, GRID, probs=True))
        else:
            enqueue_sequential(queue.view(1, K * C, -1), ptr[:1], norm_u.transpose(1, 2), torch.zeros(B, C, dtype=torch.long))
    torch.testing.assert_close(model.memory.queue, queue)
    assert torch.equal(model.memory.ptr, ptr)


def test_full_needs_teacher_logits_in_training():
    model, x_l, x_u, _ = make("full")
    with pytest.raises(ValueError, match="teacher_logits_u"):
        model.forward_semi(x_l, x_u, None, use_memory=False)


def test_gather_is_a_no_op_without_a_process_group():
    a, b = torch.randn(2, 3), torch.arange(4)
    out = gather_from_ranks(a, b)
    assert out[0] is a and out[1] is b


def _ddp_worker(rank, port, result_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model, x_l, _, _ = make("full")
        x_u = torch.randn(2, B, C, *GRID, generator=torch.Generator().manual_seed(7))[rank]
        logits = torch.randn(2, B, K, 64, 96, generator=torch.Generator().manual_seed(8))[rank]
        model.train()
        model.forward_semi(x_l, x_u, logits, use_memory=True)
        torch.save(dict(model.memory.state_dict()), os.path.join(result_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_every_rank_writes_the_global_batch(tmp_path):
    """Two gloo ranks with different unlabeled halves end with identical memories = FIFO of the whole batch."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2)
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    model, _, _, _ = make("full")
    x_u = torch.randn(2, B, C, *GRID, generator=torch.Generator().manual_seed(7)).flatten(0, 1)
    logits = torch.randn(2, B, K, 64, 96, generator=torch.Generator().manual_seed(8)).flatten(0, 1)
    queue, ptr = model.memory.queue.clone(), model.memory.ptr.clone()
    with torch.no_grad():
        norm_u = model.attn_norm(model.map_in(x_u).flatten(2).transpose(1, 2))
    enqueue_sequential(queue, ptr, norm_u.transpose(1, 2), ref_group(norm_u, logits, GRID, probs=True))
    for state in states:
        torch.testing.assert_close(state["queue"], queue)
        assert torch.equal(state["ptr"], ptr)


def test_enqueue_traces_as_one_graph_without_host_syncs():
    """fullgraph=True fails on .item()/.tolist()/data-dependent shapes: the update stays on the device."""
    queue, ptr = torch.randn(K, C, 5), torch.zeros(K, dtype=torch.long)
    ref_queue, ref_ptr = queue.clone(), ptr.clone()
    channels, classes = torch.randn(B, C, 5), torch.randint(0, K, (B, C))
    torch.compile(enqueue, backend="eager", fullgraph=True)(queue, ptr, channels, classes)
    enqueue_sequential(ref_queue, ref_ptr, channels, classes)
    assert torch.equal(queue, ref_queue) and torch.equal(ptr, ref_ptr)
