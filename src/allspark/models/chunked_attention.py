"""Unscaled softmax(q k^T) v with dropout on the map, in cache-sized chunks (CPU training path, METHODS.md 1.1).

CPU SDPA has no fused kernel with dropout: it falls back to the math path, which writes the whole map, a float
Bernoulli mask and the dropped map to DRAM and keeps them for backward (with the memory on, one AllSpark step
cost 2.2x a SemiBaseline step, BENCHMARKS.md). Here each chunk of the map (~1 MiB) goes through scores, softmax,
dropout and A @ V before the next; backward recomputes the map from the saved logsumexp (flash-style). Only
the dropout mask is kept, one byte per entry: drawing it again in backward would cost more than reading it
(the CPU generator is serial). The mask takes 16 random bits per entry, 4 entries per int64 draw of the
global generator (torch.manual_seed makes runs reproducible): ~4x cheaper than bernoulli_ on floats.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

CHUNK_ENTRIES = 2**18  # map entries per chunk: 1 MiB of fp32 scores, about one core's L2
FIELD = 2**16  # mask resolution: one uniform 16-bit field per map entry
# Longest d it pays for: backward recomputes the map (one more (n x m x d) product) and small GEMMs run slower
# than SDPA's whole-map ones. 1 thread, n = 1024, m = 10752: d = 36 1.9x faster than the math path, d = 121
# 1.2x; n = 512, m = 21504, d = 289 (Pascal, crop 513): 1.35x slower.
MAX_DIM = 128


def keep_threshold(dropout_p: float) -> tuple[int, float]:
    """(threshold on signed 16-bit fields, exact keep probability): an entry is kept when its field is below the
    threshold, i.e. with probability round((1 - p) * 2^16) / 2^16 (p = 0.1: 58982 / 65536 = 0.899994)."""
    kept = round((1.0 - dropout_p) * FIELD)
    return kept - FIELD // 2, kept / FIELD


def draw_keep_mask(rows: int, cols: int, threshold: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """(rows, cols) bool mask, True = kept, from 16-bit fields of uniform int64 draws (4 entries per draw)."""
    entries = rows * cols
    bits = torch.empty(-(-entries // 4), dtype=torch.int64).random_(-2**63, None)
    return torch.lt(bits.view(torch.int16)[:entries].view(rows, cols), threshold, out=out)


class _ChunkedDropoutAttention(torch.autograd.Function):
    """q (n, d), k, v (m, d) -> (n, d). Forward by query rows (softmax needs whole rows), backward by key columns
    from the saved row logsumexp: the running sum is then dq (n, d), small, instead of dk and dv (m, d) each.
    Saves q, k, v, the output, the logsumexp and the (n, m) bool keep mask (None without dropout)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")  # backward then runs under forward's autocast state, whoever calls it
    def forward(ctx, q, k, v, dropout_p):
        n, m = q.shape[0], k.shape[0]
        threshold, keep = keep_threshold(dropout_p)
        rows = max(1, CHUNK_ENTRIES // m)
        out, lse = q.new_empty(n, v.shape[1]), q.new_empty(n, 1)
        mask = torch.empty(n, m, dtype=torch.bool) if keep < 1 else None  # p < 2^-17 rounds to no dropout
        k_t = k.mT
        for start in range(0, n, rows):
            part = slice(start, start + rows)
            scores = q[part] @ k_t  # (r, m)
            attn = torch.softmax(scores, -1)
            # logsumexp = max(s) - log(max(a)), no second pass of exponentials
            torch.sub(scores.amax(-1, keepdim=True), attn.amax(-1, keepdim=True).log_(), out=lse[part])
            if mask is not None:
                draw_keep_mask(attn.shape[0], m, threshold, out=mask[part])
                attn.mul_(mask[part].view(torch.uint8))  # uint8: a cheap cast inside mul, unlike bool
            torch.mm(attn, v, out=out[part])
        if mask is not None:
            out.mul_(1.0 / keep)
        ctx.save_for_backward(q, k, v, out, lse, mask)
        ctx.keep = keep
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, lse, mask = ctx.saved_tensors
        n, m = q.shape[0], k.shape[0]
        grad_scaled = grad_out.contiguous() / ctx.keep  # (n, d): the 1/keep of the dropout, applied once
        delta = (grad_out * out).sum(-1, keepdim=True)  # (n, 1) = rowsum(A * dA), dropout included
        grad_q, grad_k, grad_v = torch.zeros_like(q), torch.empty_like(k), torch.empty_like(v)
        cols = max(1, CHUNK_ENTRIES // n)
        for start in range(0, m, cols):
            part = slice(start, start + cols)
            attn = torch.mm(q, k[part].mT).sub_(lse).exp_()  # (n, c), as in forward
            dropped = attn * mask[:, part].view(torch.uint8) if mask is not None else attn  # (n, c)
            torch.mm(dropped.mT, grad_scaled, out=grad_v[part])
            # softmax backward A * (M * dA' - delta) = (A * M) * dA' - A * delta: the mask (0/1) read once
            grad_s = (grad_scaled @ v[part].mT).mul_(dropped).addcmul_(attn, delta, value=-1)
            grad_q.addmm_(grad_s, k[part])
            torch.mm(grad_s.mT, q, out=grad_k[part])
        return grad_q, grad_k, grad_v, None


def chunked_dropout_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """softmax(q k^T) dropout(p) v, no scaling: q (n, d), k, v (m, d) on the CPU, 0 <= p < 1 -> (n, d).
    Dropout keeps each map entry with probability keep_threshold(p)[1] and scales kept ones by its inverse."""
    if q.device.type != "cpu" or q.dim() != 2 or k.dim() != 2 or v.dim() != 2:
        raise ValueError(f"chunked_dropout_attention takes 2-D CPU tensors, got q {tuple(q.shape)} on {q.device}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    return _ChunkedDropoutAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), dropout_p)
