"""The AllSpark bottleneck: channel-wise attention, Semantic Memory and grouping (METHODS.md 1.1-1.3, 5)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from allspark.config.schema import ABLATIONS, GROUPINGS
from allspark.distributed import is_initialized
from allspark.encoders.specs import HIERARCHICAL_STRIDE
from allspark.models.chunked_attention import MAX_DIM, chunked_dropout_attention

MODULE_ABLATIONS = tuple(a for a in ABLATIONS if a != "none")  # the Table 5 rows that have the module
IN_EPS = 1e-5  # instance norm of the attention maps (METHODS.md 1.1)
LN_EPS = 1e-6


def _map_inv_std(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """1 / sqrt(var(q k^T) + eps) of every map, from d x d Gram matrices instead of the (n x m) map.

    With q_i = qm + q'_i and k_j = km + k'_j (centred rows), S_ij - mean = qm.k'_j + q'_i.km + q'_i.k'_j;
    the cross terms sum to zero, leaving three non-negative sums (no cancellation in fp32).
    """
    n, m = q.shape[-2], k.shape[-2]
    q_mean, k_mean = q.mean(-2, keepdim=True), k.mean(-2, keepdim=True)  # (..., 1, d)
    qc, kc = q - q_mean, k - k_mean
    gram_q, gram_k = qc.mT @ qc, kc.mT @ kc  # (..., d, d)
    sq_dev = (n * (q_mean @ gram_k @ q_mean.mT) + m * (k_mean @ gram_q @ k_mean.mT)
              + (gram_q * gram_k).sum((-2, -1), keepdim=True))  # (..., 1, 1)
    return torch.rsqrt(sq_dev / (n * m) + IN_EPS)


def _fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """Unscaled softmax(q k^T) v through the fused SDPA kernels; the last dim is zero-padded to a
    multiple of 8 (exact: zeros add nothing to dot products) because the GPU kernels need aligned sizes."""
    d = q.shape[-1]
    pad = (0, -d % 8)
    q, k, v = F.pad(q, pad), F.pad(k, pad), F.pad(v, pad)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=1.0)[..., :d]


def instance_normalised(scores: torch.Tensor, two_pass: bool = False) -> torch.Tensor:
    """Each (n x m) map of `scores` less its mean, over its standard deviation (METHODS.md 1.1). two_pass: the
    variance as the mean of the centred squares, ~50x faster on the CPU than var_mean's one-pass reduction (4 maps
    of 512 x 512, one thread) and as exact in fp32; var_mean stays where it was, so fp32 runs keep their bits."""
    if two_pass:
        centred = scores - scores.mean((-2, -1), keepdim=True)
        return centred * torch.rsqrt(centred.square().mean((-2, -1), keepdim=True) + IN_EPS)
    var, mean = torch.var_mean(scores, dim=(-2, -1), correction=0, keepdim=True)
    return (scores - mean) * torch.rsqrt(var + IN_EPS)


# Run eagerly inside torch.compile graphs: inductor's lowering of this fp32 SDPA and its backward picked
# the memory-efficient kernel with arguments it then rejected ("cutlassF: no kernel found", torch 2.11,
# H100); eager SDPA is already a fused kernel, so the graph break costs little.
@torch.compiler.disable
def channel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
                      fast: bool = True) -> torch.Tensor:
    """softmax(IN(q k^T)) v for every map, in fp32 (METHODS.md 1.1, 6): q (B, H, n, d); k, v (B, H, m, d)
    or (1, 1, m, d) shared by all maps. IN normalises each whole (n x m) map; no 1/sqrt(d) scaling.

    fast: softmax ignores the one mean IN subtracts per map, so softmax(IN(S)) = softmax(S / std(S));
    std comes from Gram matrices and the attention runs in SDPA, never storing the map for backward.
    fast=False, or no autograd (nothing to store; the Gram products would be extra work), materialises the map.
    """
    dtype = torch.promote_types(q.dtype, torch.float32)
    reduced = q.dtype in (torch.bfloat16, torch.float16)  # under autocast: the projections ran in bf16 / fp16
    with torch.autocast(q.device.type, enabled=False):
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        if not (fast and torch.is_grad_enabled()):
            attn = instance_normalised(q @ k.mT, two_pass=reduced).softmax(-1)  # (B, H, n, m)
            return F.dropout(attn, dropout_p, training=dropout_p > 0) @ v
        q = q * _map_inv_std(q, k)
        if k.shape[0] * k.shape[1] > 1:
            return _fused_attention(q, k, v, dropout_p)
        # shared keys: all maps' query rows in one list (softmax is per row), keys projected once
        rows = q.reshape(-1, q.shape[-1])  # (B*H*n, d)
        if dropout_p > 0 and q.device.type == "cpu" and q.shape[-1] <= MAX_DIM:
            # CPU SDPA has no fused kernel with dropout; its math path costs up to 2x (see chunked_attention)
            out = chunked_dropout_attention(rows, k[0, 0], v[0, 0], dropout_p)
        else:
            out = _fused_attention(rows[None, None], k, v, dropout_p)[0, 0]
        return out.view(q.shape)


class ChannelAttention(nn.Module):
    """Channel-wise attention: unlabeled self-attention with heads, labeled cross-attention without (METHODS.md 1.1)."""

    def __init__(self, channels: int, heads: int, dropout: float, fast: bool = True):
        super().__init__()
        inner = channels * heads
        self.heads, self.dropout, self.fast = heads, dropout, fast
        self.q_u, self.k_u, self.v_u = (nn.Linear(channels, inner, bias=False) for _ in range(3))
        self.out_u = nn.Linear(inner, channels, bias=False)
        self.q_l, self.k_l, self.v_l = (nn.Linear(channels, inner, bias=False) for _ in range(3))
        self.out_l = nn.Linear(inner, channels, bias=False)
        self.proj_drop = nn.Dropout(dropout)
        for layer in self.modules():
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)

    def _attend(self, q, k, v):
        return channel_attention(q, k, v, self.dropout if self.training else 0.0, self.fast)

    def unlabeled(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image, per-head channel self-attention: (B, d, C) -> (B, d, C)."""
        b, d, c = x.shape
        q, k, v = (proj(x).view(b, d, self.heads, c).permute(0, 2, 3, 1) for proj in (self.q_u, self.k_u, self.v_u))
        out = self._attend(q, k, v)  # (B, H, C, d), head-major split
        out = out.permute(0, 3, 2, 1).reshape(b, d, c * self.heads)  # feature c*H + h: channel-major
        return self.proj_drop(self.out_u(out))

    def labeled(self, x: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-attention from each image's C*H query channels to all channels of source (S, d, C),
        shared by the batch; source None: each image's own channels (inference, METHODS.md 1.3). (B, d, C) -> (B, d, C).
        """
        b, d, c = x.shape
        q = self.q_l(x).mT.unsqueeze(1)  # (B, 1, CH, d)
        kv = x if source is None else source
        k, v = self.k_l(kv).mT.unsqueeze(1), self.v_l(kv).mT.unsqueeze(1)  # (S, 1, CH, d)
        if source is not None:
            k, v = k.reshape(1, 1, -1, d), v.reshape(1, 1, -1, d)  # (1, 1, S*CH, d), key s*CH + c
        out = self._attend(q, k, v).squeeze(1).mT  # (B, d, CH)
        return self.proj_drop(self.out_l(out))


class SemanticMemory(nn.Module):
    """S-Mem (METHODS.md 1.2): K FIFO queues of C channel vectors of length d, one write pointer each."""

    def __init__(self, num_classes: int, channels: int, tokens: int):
        super().__init__()
        self.register_buffer("queue", torch.randn(num_classes, channels, tokens))
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))


def group_channels(x_u: torch.Tensor, teacher_logits: torch.Tensor, token_grid: tuple[int, int],
                   probs: bool = True) -> torch.Tensor:
    """Channel-wise Semantic Grouping (METHODS.md 1.2): the class of each channel of x_u (B, d, C), d = h*w, by
    cosine similarity with the teacher's class maps (B, K, H, W) resized to token_grid (h, w) -> (B, C).

    probs=True: softmax over classes before resizing (paper); False: raw logits (the release).
    """
    with torch.autocast(x_u.device.type, enabled=False):
        maps = teacher_logits.float()
        if probs:
            maps = maps.softmax(1)
        tokens = F.interpolate(maps, size=tuple(token_grid), mode="bilinear", align_corners=False).flatten(2)
        sim = F.normalize(tokens, dim=-1) @ F.normalize(x_u.float(), dim=1)  # (B, K, C)
    return sim.argmax(1)


@torch.no_grad()
def enqueue(queue: torch.Tensor, ptr: torch.Tensor, channels: torch.Tensor, classes: torch.Tensor) -> None:
    """Write channels (..., d) into the class ring buffers of queue (K, S, d) in place, advancing ptr (K,):
    vectorised on the device, no host sync; equal to enqueue_sequential (METHODS.md 1.2)."""
    num_q, slots, d = queue.shape
    channels, classes = channels.reshape(-1, d), classes.reshape(-1)  # (N, d), (N,) in (image, channel) order
    seen = (classes[:, None] == torch.arange(num_q, device=classes.device)).long().cumsum(0)  # (N, K)
    rank = seen.gather(1, classes[:, None]).squeeze(1) - 1  # (N,) order of each channel within its class
    count = seen[-1]  # (K,) channels per class
    # a class given more than `slots` channels overwrites its own: each writer of a slot writes the value of
    # that slot's last writer (same rank modulo slots, the highest below count), so duplicate indices agree
    last = rank + slots * ((count[classes] - 1 - rank) // slots)
    by_class = torch.argsort(classes, stable=True)  # channel of (class k, rank r) is by_class[start[k] + r]
    start = count.cumsum(0) - count
    source = by_class[start[classes] + last]
    index = classes * slots + (ptr[classes] + rank) % slots
    queue.view(-1, d)[index] = channels[source].to(queue.dtype)
    ptr.copy_((ptr + count) % slots)


@torch.no_grad()
def enqueue_sequential(queue: torch.Tensor, ptr: torch.Tensor, channels: torch.Tensor, classes: torch.Tensor) -> None:
    """The specification's FIFO, written plainly (reference for tests and benchmarks, slow): for each image in
    batch order, each class in increasing order, its channels in channel order, at the pointer, wrapping."""
    slots = queue.shape[1]
    for image_channels, image_classes in zip(channels, classes):
        for k in sorted(set(image_classes.tolist())):
            for vector in image_channels[image_classes == k]:
                queue[k, ptr[k]] = vector
                ptr[k] = (ptr[k] + 1) % slots


def gather_from_ranks(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Concatenate each tensor over all ranks along dim 0 in rank order (METHODS.md 5: every rank writes the
    global batch); unchanged without an initialised process group. Needs equal shapes on every rank."""
    if not is_initialized() or dist.get_world_size() == 1:
        return tensors
    gathered = []
    for tensor in tensors:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        gathered.append(torch.cat(parts))
    return tuple(gathered)


class AllSparkBottleneck(nn.Module):
    """AllSpark on the last encoder stage (METHODS.md 1): map_in, channel attention + residual, map_out.

    Ablations (Table 5): "cca" never writes or reads the memory; "cca_mem" writes all channels without
    grouping, treating the K*C slots as one ring buffer (pointer in ptr[0]); "full" groups channels by class.
    """

    def __init__(self, channels: int, num_classes: int, token_grid: tuple[int, int], heads: int = 2,
                 ablation: str = "full", grouping: str = "probs", dropout: float = 0.1, fast: bool = True,
                 stride: int = HIERARCHICAL_STRIDE):
        super().__init__()
        self.stride = stride  # of the encoder map it reads, for the crop range a wrong grid's error names
        if ablation not in MODULE_ABLATIONS:
            raise ValueError(f"ablation must be one of {MODULE_ABLATIONS}, got {ablation!r}")
        if grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
        self.ablation, self.grouping = ablation, grouping
        self.token_grid = tuple(token_grid)
        self.map_in = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.GELU())
        self.attn_norm = nn.LayerNorm(channels, eps=LN_EPS)
        self.attn = ChannelAttention(channels, heads, dropout, fast)
        self.out_norm = nn.LayerNorm(channels, eps=LN_EPS)
        self.map_out = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.GELU())
        self.memory = SemanticMemory(num_classes, channels, self.token_grid[0] * self.token_grid[1])

    @staticmethod
    def tokens_for_crop(crop_size: int, stride: int = HIERARCHICAL_STRIDE) -> tuple[int, int]:
        """Token grid of a square crop after a MiT (the release's encoder; EncoderSpec.feature_grid for any):
        ceil(crop / stride) per side (513 -> (17, 17))."""
        side = -(-crop_size // stride)
        return side, side

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.map_in(x).flatten(2).mT  # (N, d, C)

    def _finish(self, attended: torch.Tensor, tokens: torch.Tensor, size) -> torch.Tensor:
        y = self.out_norm(attended + tokens).mT  # (N, C, d)
        return self.map_out(y.reshape(*y.shape[:2], *size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inference (METHODS.md 1.3): (N, C, h, w) -> (N, C, h, w), each image attending to its own channels."""
        tokens = self._tokens(x)
        return self._finish(self.attn.labeled(self.attn_norm(tokens)), tokens, x.shape[-2:])

    def forward_semi(self, x_l: torch.Tensor, x_u: torch.Tensor, teacher_logits_u: torch.Tensor | None,
                     use_memory: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Training step (METHODS.md 1.1, 1.2): (B, C, h, w) x 2 and teacher logits (B, K, H, W) -> (y_l, y_u).

        In train mode "cca_mem"/"full" write the memory before the attention; use_memory makes the memory
        the labeled branch's keys (ignored for "cca"). teacher_logits_u is only read by "full".
        """
        writes = self.training and self.ablation != "cca"
        reads = use_memory and self.ablation != "cca"
        if writes or reads:
            self._check_grid(x_u.shape[-2:])
        t_l, t_u = self._tokens(x_l), self._tokens(x_u)
        norm_l, norm_u = self.attn_norm(t_l), self.attn_norm(t_u)  # (B, d, C)
        if writes:
            self._update_memory(norm_u.detach(), teacher_logits_u, x_u.shape[-2:])
        source = self.memory.queue.mT.contiguous() if reads else norm_u  # (K, d, C) or (B, d, C)
        y_l = self._finish(self.attn.labeled(norm_l, source), t_l, x_l.shape[-2:])
        y_u = self._finish(self.attn.unlabeled(norm_u), t_u, x_u.shape[-2:])
        return y_l, y_u

    def _check_grid(self, size) -> None:
        h, w = self.token_grid
        if size[0] * size[1] != h * w:
            lo, hi = (h - 1) * self.stride + 1, h * self.stride
            raise ValueError(f"the Semantic Memory was built for a {h}x{w} token grid (d={h * w}, training crop "
                             f"{lo}..{hi}); forward_semi got a {size[0]}x{size[1]} grid (d={size[0] * size[1]}): "
                             f"train at the crop size the model was built with (model.crop_size)")

    @torch.no_grad()
    def _update_memory(self, norm_u: torch.Tensor, teacher_logits_u: torch.Tensor | None, grid) -> None:
        """Group (full) and enqueue this step's unlabeled channels from all ranks (METHODS.md 1.2, 5)."""
        queue, ptr = self.memory.queue, self.memory.ptr
        if self.ablation == "full":
            if teacher_logits_u is None:
                raise ValueError("ablation 'full' groups channels by the teacher's prediction: "
                                 "forward_semi needs teacher_logits_u in training, got None")
            classes = group_channels(norm_u, teacher_logits_u, grid, probs=self.grouping == "probs")  # (B, C)
        else:
            classes = torch.zeros(norm_u.shape[0], norm_u.shape[2], dtype=torch.long, device=norm_u.device)  # (B, C)
            queue, ptr = queue.view(1, -1, queue.shape[-1]), ptr[:1]  # one ring of K*C slots
        channels, classes = gather_from_ranks(norm_u.mT.contiguous(), classes)  # (B', C, d), (B', C)
        enqueue(queue, ptr, channels, classes)
