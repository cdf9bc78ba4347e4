"""The attention our transformers encoders call: SDPA, except bf16 / fp16 on the CPU, where explicit products are
faster.

transformers picks a model's attention function by `config._attn_implementation` from its AttentionInterface; ours
is registered there under NAME. In fp32, or on a GPU, it is transformers' own SDPA function, untouched (results
bit for bit as before). Under bf16 on the CPU, SDPA's flash kernel runs its products at a fraction of the vector
units' bf16 rate (its backward most of all), while q k^T and A v as plain matrix products reach it: measured with one
thread (benchmarks/speed/bench_bf16.py, BENCHMARKS.md), forward + backward 2.2x faster for DINOv2-S at crop 224
(4 x 6 heads x 257 tokens) and 3-8x for MiT's short reduced keys. The products run in the incoming dtype, the
softmax computes in fp32 (see LONG_ROWS). Maps over MAX_MAP entries per head go to SDPA still: the explicit map
is kept for backward, the flash kernel's is not.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "allspark"
MAX_MAP = 2**20  # query x key entries per head map: e.g. 1024 x 1024 tokens; DINOv2 at crop 518 (1370^2) is over
# From this many keys on, the softmax takes the bf16 scores as they are: the CPU kernel computes in fp32 and rounds
# once, so it gives softmax(fp32).to(bf16) (1 in 2e5 entries a unit of the last place apart, 4 x 6 x 257 x 257)
# 2-4x faster, forward and backward; on shorter rows its bf16 kernel is the slower one (25 keys: 4x), so there the
# scores go to fp32 first (one thread; bench_bf16 --attention).
LONG_ROWS = 96


def explicit_wanted(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                    attention_mask: torch.Tensor | None) -> bool:
    """Whether the explicit products beat SDPA here: reduced precision on the CPU, an encoder's attention (no mask,
    not causal), a map of bounded size."""
    return (query.device.type == "cpu" and query.dtype in (torch.bfloat16, torch.float16) and attention_mask is None
            and not getattr(module, "is_causal", False) and query.shape[-2] * key.shape[-2] <= MAX_MAP)


def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """transformers' attention signature: (B, H, n, d) query, (B, H, m, d) key and value -> ((B, n, H, d), None)."""
    if not explicit_wanted(module, query, key, attention_mask):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query * scaling, key.mT)  # (B, H, n, m)
    if key.shape[-2] >= LONG_ROWS:
        weights = torch.softmax(scores, dim=-1)
    else:
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    weights = F.dropout(weights, p=dropout, training=dropout > 0)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


def use_attention(config) -> None:
    """Route a transformers config's attention through `attention` where it would use SDPA."""
    AttentionInterface.register(NAME, attention)  # idempotent: the same function under the same name
    if config._attn_implementation == "sdpa":
        config._attn_implementation = NAME
