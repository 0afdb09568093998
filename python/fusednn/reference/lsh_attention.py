"""Plain-PyTorch LSH attention (Reformer): hashing, sorting, chunked attention with its masks,
the combination of the hash rounds. Any float dtype and device; the arithmetic runs in float32
(float64 for float64 inputs) and the result is cast back to v's dtype. Autograd comes from
PyTorch; the bucket assignment is not differentiated.

The definition, which ``fusednn.ops.lsh_attention`` shares (qk [B, H, T, D], v [B, H, T, Dv],
R = n_hashes rounds):

* hashing: x = qk / ||qk|| (L2 over D); round r's bucket of a token is
  ``argmax([x R_r, -x R_r])`` with R_r = rotations[r], [D, n_buckets // 2];
* sorting: round r orders the tokens by (bucket, position); slot s of the sorted sequence
  holds the token at original position ``order[..., r, s]``;
* chunks: the sorted sequence is cut into chunks of chunk_size slots (the last one may be
  shorter); the queries of chunk c see the keys of chunks c - 1 and c (chunk 0 only its own:
  no wrap-around). Keys of other buckets inside those chunks are visible;
* masks: a token does not see itself; with causal it sees only original positions j < i.
  A token left with no visible key sees itself alone (decided per round);
* scores: ``scale * q . k`` with queries q = qk as given and keys k = qk / ||qk||; softmax over
  the visible keys gives each round's output o_r and log-sum-exp lse_r;
* combination: ``o = sum_r softmax_r(lse_r) o_r``. The same key may count in several rounds.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validate import accumulate_dtype

__all__ = ["lsh_attention"]


def draw_rotations(n_hashes: int, head_dim: int, n_buckets: int, device) -> Tensor:
    """Random rotations [n_hashes, head_dim, n_buckets // 2], float32, from torch's generator of
    ``device`` (torch.manual_seed reproduces them)."""
    return torch.randn((n_hashes, head_dim, n_buckets // 2), device=device, dtype=torch.float32)


def shared_keys(qk: Tensor) -> Tensor:
    """The keys qk / ||qk|| (L2 over the head dim, F.normalize's guard against a zero vector),
    normalised in float32 (float64 for float64) and returned in qk's dtype."""
    return F.normalize(qk.to(accumulate_dtype(qk.dtype)), dim=-1).to(qk.dtype)


@torch.no_grad()
def sort_order(qk: Tensor, rotations: Tensor) -> Tensor:
    """order [B, H, R, T] int64: the original position held by each sorted slot of each round,
    the tokens sorted by (bucket, position). Hashing runs in float32 (float64 for float64)."""
    compute = accumulate_dtype(qk.dtype)
    x = F.normalize(qk.to(compute), dim=-1)
    projected = torch.einsum("bhtd,rdk->bhrtk", x, rotations.to(compute))
    buckets = torch.cat([projected, -projected], dim=-1).argmax(dim=-1)  # [B, H, R, T]
    seqlen = qk.shape[2]
    return torch.argsort(buckets * seqlen + torch.arange(seqlen, device=qk.device), dim=-1)


def chunked_attention(q: Tensor, k: Tensor, v: Tensor, order: Tensor, chunk_size: int, causal: bool, scale: float,
                      upcast: bool = True) -> tuple[Tensor, Tensor]:
    """Each round's attention: q, k [B, H, T, D], v [B, H, T, Dv], order [B, H, R, T] (see
    sort_order). Returns out [B, H, R, T, Dv] (v's dtype) and lse [B, H, R, T] (float32,
    float64 for float64), both in original token order. ``upcast=False`` does the two matrix
    products in the inputs' dtype (softmax still in float32): PyTorch's low-precision
    computation, the baseline of the float16/bfloat16 error rule."""
    softmax_dtype = accumulate_dtype(q.dtype)
    compute = softmax_dtype if upcast else q.dtype
    seqlen, rounds = q.shape[2], order.shape[2]

    def sorted_rows(t: Tensor) -> Tensor:  # [B, H, T, E] -> [B, H, R, T, E] in each round's sorted order
        index = order[..., None].expand(*order.shape, t.shape[-1])
        return t.to(compute)[:, :, None].expand(-1, -1, rounds, -1, -1).gather(3, index)

    qs, ks, vs = sorted_rows(q), sorted_rows(k), sorted_rows(v)
    chunk = torch.arange(seqlen, device=q.device) // chunk_size
    chunk_gap = chunk[:, None] - chunk[None, :]  # [T, T] over sorted slots: query chunk - key chunk
    in_window = (chunk_gap == 0) | (chunk_gap == 1)
    pos_q, pos_k = order[..., :, None], order[..., None, :]
    others = in_window & (pos_k < pos_q if causal else pos_k != pos_q)  # [B, H, R, T, T]
    alone = ~others.any(dim=-1, keepdim=True)
    visible = others | ((pos_k == pos_q) & alone)
    s = (qs @ ks.transpose(-1, -2)).to(softmax_dtype) * scale
    s = s.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None])
    out_sorted = p.to(compute) @ vs
    unsort = torch.argsort(order, dim=-1)
    out = out_sorted.gather(3, unsort[..., None].expand(*unsort.shape, out_sorted.shape[-1]))
    return out.to(v.dtype), lse.gather(3, unsort)


def combine_rounds(out: Tensor, lse: Tensor) -> Tensor:
    """out [B, H, R, T, Dv], lse [B, H, R, T] -> [B, H, T, Dv]: the rounds weighted by the
    softmax over rounds of their log-sum-exps (what one attention over all rounds' keys gives)."""
    weights = torch.softmax(lse.to(accumulate_dtype(out.dtype)), dim=2)
    return (weights[..., None] * out.to(weights.dtype)).sum(dim=2).to(out.dtype)


def lsh_attention(
    qk: Tensor,
    v: Tensor,
    *,
    n_buckets: int,
    n_hashes: int = 1,
    chunk_size: int = 64,
    causal: bool = False,
    rotations: Optional[Tensor] = None,
    scale: Optional[float] = None,
    upcast: bool = True,
) -> Tensor:
    """qk [B, H, T, D], v [B, H, T, Dv] -> out [B, H, T, Dv] in v's dtype; the arguments of
    ``fusednn.ops.lsh_attention`` plus ``upcast`` (see chunked_attention). rotations
    [n_hashes, D, n_buckets // 2], drawn with draw_rotations when None."""
    if rotations is None:
        rotations = draw_rotations(n_hashes, qk.shape[-1], n_buckets, qk.device)
    scale = qk.shape[-1] ** -0.5 if scale is None else scale
    order = sort_order(qk, rotations)
    out, lse = chunked_attention(qk, shared_keys(qk), v, order, chunk_size, causal, scale, upcast)
    return combine_rounds(out, lse)
