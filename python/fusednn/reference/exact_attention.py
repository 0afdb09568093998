"""Plain-PyTorch exact attention: the scores matrix materialised, softmax, dropout, the
weighted sum. Any float dtype and device; the arithmetic runs in float32 (float64 for
float64 inputs) and the result is cast back to q's dtype. Autograd comes from PyTorch.

Semantics shared with the fused kernels (``fusednn.ops.attention``):

* scores ``s = scale * q @ k^T``; with ``softcap``: ``s = softcap * tanh(s / softcap)``;
  then ``attn_bias`` is added (float) or applied as a mask (bool, True = may attend);
* visibility: with alignment "top_left" query i sits at key position i, with
  "bottom_right" at i + Tk - Tq. ``causal`` hides keys after that position;
  ``window=(left, right)`` keeps keys j with pos - left <= j <= pos + right
  (None = unbounded on that side);
* a query row that sees no key gives output 0 (log-sum-exp -inf) and zero gradients;
* dropout multiplies the normalised probabilities by ``keep / (1 - dropout_p)``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._validate import accumulate_dtype

__all__ = ["attention", "attention_varlen", "scaled_dot_product_attention", "visible_keys"]


def visible_keys(
    Tq: int,
    Tk: int,
    *,
    causal: bool = False,
    window: Optional[tuple[Optional[int], Optional[int]]] = None,
    alignment: str = "top_left",
    device=None,
) -> Optional[Tensor]:
    """Bool [Tq, Tk]: True where query i may see key j (None when every key is visible).
    A window side of None or -1 is unbounded."""
    left, right = window if window is not None else (None, None)
    left, right = (None if side is None or side < 0 else side for side in (left, right))
    if causal:
        right = 0 if right is None else min(right, 0)
    if left is None and right is None:
        return None
    shift = Tk - Tq if alignment == "bottom_right" else 0
    pos = torch.arange(Tq, device=device)[:, None] + shift
    j = torch.arange(Tk, device=device)[None, :]
    visible = torch.ones(Tq, Tk, dtype=torch.bool, device=device)
    if left is not None:
        visible &= j >= pos - left
    if right is not None:
        visible &= j <= pos + right
    return visible


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    window: Optional[tuple[Optional[int], Optional[int]]] = None,
    scale: Optional[float] = None,
    softcap: Optional[float] = None,
    attn_bias: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    dropout_mask: Optional[Tensor] = None,
    return_lse: bool = False,
    deterministic: bool = False,
    alignment: str = "top_left",
    upcast: bool = True,
):
    """q: [B, Hq, Tq, D]; k: [B, Hkv, Tk, D]; v: [B, Hkv, Tk, Dv]; Hq a multiple of Hkv.
    The arguments of ``fusednn.ops.attention`` (``deterministic`` changes nothing: this
    computation is deterministic), plus ``dropout_mask`` and ``upcast``.

    attn_bias: bool or float, broadcastable to [B, Hq, Tq, Tk]. dropout_mask: bool keep-mask
    broadcastable to [B, Hq, Tq, Tk]; when dropout_p > 0 and it is None, one is drawn with
    torch's generator. Returns out [B, Hq, Tq, Dv] in q's dtype, and lse [B, Hq, Tq]
    (float32, natural log; -inf for rows that see no key) when return_lse.

    ``upcast=False`` does the two matrix products in q's dtype (scores rounded to it, the
    probabilities rounded before the product with v; softmax still in float32): PyTorch's
    low-precision computation, the baseline of the 2x error rule for float16/bfloat16.
    """
    softmax_dtype = accumulate_dtype(q.dtype)
    compute = softmax_dtype if upcast else q.dtype
    Hq, Tq, D = q.shape[-3], q.shape[-2], q.shape[-1]
    Hkv, Tk = k.shape[-3], k.shape[-2]
    group = Hq // Hkv
    qf, kf, vf = q.to(compute), k.to(compute), v.to(compute)
    if group > 1:
        kf = kf.repeat_interleave(group, dim=-3)
        vf = vf.repeat_interleave(group, dim=-3)
    scale = D**-0.5 if scale is None else scale
    s = (qf @ kf.transpose(-1, -2)).to(softmax_dtype) * scale
    if softcap is not None and softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    hidden = None
    if attn_bias is not None:
        if attn_bias.dtype == torch.bool:
            hidden = ~attn_bias
        else:
            s = s + attn_bias.to(s.dtype)
    visible = visible_keys(Tq, Tk, causal=causal, window=window, alignment=alignment, device=q.device)
    if visible is not None:
        hidden = ~visible if hidden is None else (hidden | ~visible)
    if hidden is not None:
        s = s.masked_fill(hidden, float("-inf"))
    # Rows without a visible key: lse is -inf and the probabilities (and gradients) are 0.
    # Their scores are replaced before the softmax, so no -inf - -inf reaches autograd.
    empty = (s == float("-inf")).all(dim=-1, keepdim=True)
    s = s.masked_fill(empty, 0.0)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None]).masked_fill(empty, 0.0)
    lse = lse.masked_fill(empty[..., 0], float("-inf"))
    if dropout_p > 0.0:
        if dropout_mask is None:
            dropout_mask = torch.rand(p.shape, device=p.device) >= dropout_p
        p = p * dropout_mask.to(device=p.device, dtype=p.dtype) * (0.0 if dropout_p >= 1.0 else 1.0 / (1.0 - dropout_p))
    out = (p.to(compute) @ vf).to(q.dtype)
    if return_lse:
        return out, lse.float()
    return out


def attention_varlen(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    return_lse: bool = False,
    **options,
):
    """Packed sequences: q [total_q, Hq, D], k [total_k, Hkv, D], v [total_k, Hkv, Dv];
    sequence b is rows cu_seqlens[b]:cu_seqlens[b + 1]. Runs ``attention`` on each
    sequence separately. Returns out [total_q, Hq, Dv] (and lse [Hq, total_q])."""
    outs, lses = [], []
    for b in range(len(cu_seqlens_q) - 1):
        q0, q1 = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
        k0, k1 = int(cu_seqlens_k[b]), int(cu_seqlens_k[b + 1])

        def heads_first(t, lo, hi):
            return t[lo:hi].transpose(0, 1)[None]  # [1, H, T, D]

        out, lse = attention(
            heads_first(q, q0, q1), heads_first(k, k0, k1), heads_first(v, k0, k1), return_lse=True, **options
        )
        outs.append(out[0].transpose(0, 1))
        lses.append(lse[0])
    out = torch.cat(outs, dim=0) if outs else q.new_empty((0,) + tuple(q.shape[1:2]) + tuple(v.shape[-1:]))
    if return_lse:
        lse = torch.cat(lses, dim=1) if lses else q.new_empty((q.shape[1], 0), dtype=torch.float32)
        return out, lse
    return out


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None,
                                 dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False) -> Tensor:
    """torch's own scaled_dot_product_attention on its math backend: the definition that
    ``fusednn.ops.scaled_dot_product_attention`` follows (any dtype, float64 included).

    attn_mask may be a ``torch.nn.attention.bias.CausalBias`` (torch dispatches it). An
    attn_mask tensor together with is_causal, which the math backend refuses, means both:
    the mask restricted to the top-left causal band (bool: and; float: -inf outside the
    band), as torch's CPU flash kernel computes it. Rows that see no key give 0 (the math
    backend's softmax of an all -inf row)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.bias import CausalBias

    if attn_mask is not None and is_causal and not isinstance(attn_mask, CausalBias):
        band = visible_keys(query.shape[-2], key.shape[-2], causal=True, device=query.device)
        if attn_mask.dtype == torch.bool:
            attn_mask = attn_mask & band
        else:
            attn_mask = attn_mask.masked_fill(~band, float("-inf"))
        is_causal = False
    with sdpa_kernel(SDPBackend.MATH):
        return torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
            enable_gqa=enable_gqa,
        )
