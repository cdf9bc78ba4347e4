"""Two stand-ins for the memory attention that are NOT the method and only bound its cost from below, with the
signature of `chunked_dropout_attention` (q (n, d), k, v (m, d), dropout_p); used by the CPU benchmarks."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from allspark.models.allspark import _fused_attention


def flash_without_dropout(q, k, v, dropout_p):
    """Bound 1: the same attention through SDPA's fused CPU kernel, dropout left out."""
    return _fused_attention(q[None, None], k[None, None], v[None, None], 0.0)[0, 0]


class _ProductsOnly(torch.autograd.Function):
    """Bound 2: the six (n x m x d) products of an exact attention that keeps the map for backward (forward:
    scores, A @ V; backward: dA, dQ, dK, dV); the map is the raw scores (no softmax, no dropout), so outputs
    and gradients are meaningless, only the cost counts."""

    @staticmethod
    def forward(ctx, q, k, v):
        scores = q @ k.mT
        ctx.save_for_backward(q, k, v, scores)
        return scores @ v

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, scores = ctx.saved_tensors
        grad_scores = grad_out @ v.mT
        return grad_scores @ k, grad_scores.mT @ q, scores.mT @ grad_out


def products_only(q, k, v, dropout_p):
    """Bound 2 as a function (see _ProductsOnly)."""
    return _ProductsOnly.apply(q, k, v)
