"""Unscaled softmax(q k^T) v with dropout on the map, computed in row chunks (CPU training path, spec 1.1).

CPU SDPA has no fused kernel with dropout: it falls back to the math path, which writes the whole map, a float
Bernoulli mask and the dropped map to DRAM and keeps them for backward (2.2x the step time with the memory on,
issue #6). Here each chunk of query rows (a ~1 MiB slice of the map, cache-sized) goes through scores, softmax,
dropout and A @ V before the next; backward recomputes the chunk's softmax (flash-style). Only the dropout mask
is kept, one byte per entry: drawing it again in backward would cost more than reading it (the CPU generator
is serial). The mask takes 16 random bits per entry, 4 entries per int64 draw of the global generator (so
torch.manual_seed makes runs reproducible): ~4x cheaper than bernoulli_ on floats.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

CHUNK_ENTRIES = 2**18  # map entries per chunk: 1 MiB of fp32 scores, about one core's L2
FIELD = 2**16  # mask resolution: one uniform 16-bit field per map entry


def keep_threshold(dropout_p: float) -> tuple[int, float]:
    """(threshold on signed 16-bit fields, exact keep probability): an entry is kept when its field is below the
    threshold, i.e. with probability round((1 - p) * 2^16) / 2^16 (p = 0.1: 58982 / 65536 = 0.899994)."""
    kept = round((1.0 - dropout_p) * FIELD)
    return kept - FIELD // 2, kept / FIELD


def draw_keep_mask(rows: int, cols: int, threshold: int) -> torch.Tensor:
    """(rows, cols) uint8 mask, 1 = kept, from 16-bit fields of uniform int64 draws (4 entries per draw)."""
    entries = rows * cols
    bits = torch.empty(-(-entries // 4), dtype=torch.int64).random_(-2**63, None)
    return torch.lt(bits.view(torch.int16)[:entries].view(rows, cols), threshold).view(torch.uint8)


class _ChunkedDropoutAttention(torch.autograd.Function):
    """q (n, d), k, v (m, d) -> (n, d); saves q, k, v, the output and the (n, m) uint8 keep mask (None if p = 0)."""

    @staticmethod
    def forward(ctx, q, k, v, dropout_p):
        n, m = q.shape[0], k.shape[0]
        threshold, keep = keep_threshold(dropout_p)
        rows = max(1, CHUNK_ENTRIES // m)
        out = q.new_empty(n, v.shape[1])
        mask = torch.empty(n, m, dtype=torch.uint8) if keep < 1 else None  # p < 2^-17 rounds to no dropout
        k_t = k.mT
        for start in range(0, n, rows):
            part = slice(start, start + rows)
            attn = torch.softmax(q[part] @ k_t, -1)  # (r, m)
            if mask is not None:
                mask[part] = draw_keep_mask(attn.shape[0], m, threshold)
                attn.mul_(mask[part])
            torch.mm(attn, v, out=out[part])
        if mask is not None:
            out.mul_(1.0 / keep)
        ctx.save_for_backward(q, k, v, out, mask)
        ctx.keep, ctx.rows = keep, rows
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, mask = ctx.saved_tensors
        grad_scaled = grad_out.contiguous() / ctx.keep  # (n, d): the 1/keep of the dropout, applied once
        delta = (grad_out * out).sum(-1, keepdim=True)  # (n, 1) = rowsum(A * dA), dropout included
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        k_t, v_t = k.mT, v.mT
        for start in range(0, q.shape[0], ctx.rows):
            part = slice(start, start + ctx.rows)
            attn = torch.softmax(q[part] @ k_t, -1)  # (r, m), as in forward
            grad_kept = grad_scaled[part] @ v_t  # (r, m): gradient of the dropped map
            if mask is not None:
                grad_v.addmm_((attn * mask[part]).mT, grad_scaled[part])
                grad_kept.mul_(mask[part])
            else:
                grad_v.addmm_(attn.mT, grad_scaled[part])
            grad_s = grad_kept.sub_(delta[part]).mul_(attn)  # softmax backward
            torch.mm(grad_s, k, out=grad_q[part])
            grad_k.addmm_(grad_s.mT, q[part])
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
