"""Plain-PyTorch block-sparse attention: dense attention with the layout expanded to an
element mask (``fusednn.ops.sparsity.layout_to_mask``), so every hidden pair is computed and
then masked."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .exact_attention import attention

__all__ = ["block_sparse_attention"]


def block_sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: Tensor,
    *,
    block_size: int = 64,
    causal: bool = False,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
    deterministic: bool = False,
    dropout_mask: Optional[Tensor] = None,
    upcast: bool = True,
) -> Tensor:
    """q: [B, Hq, Tq, D]; k, v: [B, Hkv, Tk, D(v)]; layout: bool [Hq or 1, ceil(Tq / block_size),
    ceil(Tk / block_size)] (or 2-D for all heads). Query i attends to key j where
    ``layout[h, i // block_size, j // block_size]`` (and j <= i with causal). ``deterministic``
    changes nothing here; ``dropout_mask`` and ``upcast`` are the exact-attention reference's. Returns [B, Hq, Tq, Dv] in q's dtype."""
    tq, tk = q.shape[-2], k.shape[-2]
    rows = torch.arange(tq, device=layout.device) // block_size
    cols = torch.arange(tk, device=layout.device) // block_size
    mask = layout.to(q.device)[..., rows[:, None], cols[None, :]]  # [Hl, Tq, Tk]
    return attention(q, k, v, causal=causal, scale=scale, attn_bias=mask, dropout_p=dropout_p,
                     dropout_mask=dropout_mask, upcast=upcast)
