"""``BlockSparseSelfAttention``: multi-head self-attention over a block layout, its core
``fusednn.ops.block_sparse_attention``. torch has no such module, so this is not a drop-in:
input and output are batch-first ``[B, T, E]``."""

from __future__ import annotations

import torch
from torch import Tensor

from fusednn import ops
from fusednn._validate import Args, shape_of
from fusednn.ops.block_sparse_attention import BLOCK_SIZES

__all__ = ["BlockSparseSelfAttention"]


class BlockSparseSelfAttention(torch.nn.Module):
    """Self-attention where query block i attends to key block j only where ``layout[h, i, j]``.

    embed_dim, num_heads: E and H (E divisible by H; head dim E // H). layout: bool [H or 1,
    n_blocks, n_blocks] (or 2-D, shared by every head), built for example by
    ``fusednn.ops.sparsity``: it covers sequences of up to ``n_blocks * block_size`` tokens;
    a shorter sequence uses its top-left corner. block_size: 16, 32, 64 or 128. causal: a
    query also never sees later keys inside its blocks. dropout: on the attention
    probabilities, in training mode. Parameters: ``q_proj``, ``k_proj``, ``v_proj``,
    ``out_proj`` (``nn.Linear`` E -> E, with ``bias``); the layout is a buffer (not in the
    state_dict).

    forward(x [B, T, E]) -> [B, T, E].
    """

    def __init__(self, embed_dim: int, num_heads: int, layout: Tensor, block_size: int = 64, causal: bool = False,
                 *, dropout: float = 0.0, bias: bool = True, device=None, dtype=None):
        super().__init__()
        args = Args("fusednn.nn.BlockSparseSelfAttention")
        embed_dim = args.integer("embed_dim", embed_dim, minimum=1)
        num_heads = args.integer("num_heads", num_heads, minimum=1)
        if embed_dim % num_heads:
            raise args.error("num_heads", f"a divisor of embed_dim {embed_dim}", repr(num_heads))
        args.tensor("layout", layout, "[H or 1, n_blocks, n_blocks]", dtypes=(torch.bool,), ndim=(2, 3))
        layout = layout if layout.dim() == 3 else layout.unsqueeze(0)
        if layout.shape[0] not in (1, num_heads) or layout.shape[1] != layout.shape[2]:
            raise args.error("layout", f"[{num_heads} or 1, n_blocks, n_blocks]", shape_of(layout))
        args.choice("block_size", block_size, BLOCK_SIZES)
        self.embed_dim, self.num_heads, self.block_size = embed_dim, num_heads, block_size
        self.causal = args.boolean("causal", causal)
        self.dropout = args.real("dropout", dropout, minimum=0.0, maximum=1.0)
        factory = dict(device=device, dtype=dtype)
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            torch.nn.Linear(embed_dim, embed_dim, bias=bias, **factory) for _ in range(4))
        self.register_buffer("layout", layout.to(device=device), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        args = Args("fusednn.nn.BlockSparseSelfAttention")
        args.tensor("x", x, "[B, T, E]", ndim=3, dtypes=None)
        if x.shape[-1] != self.embed_dim:
            raise args.error("x", f"[B, T, E] with E = embed_dim = {self.embed_dim}", shape_of(x))
        batch, length, _ = x.shape
        n_blocks = -(-length // self.block_size)
        if n_blocks > self.layout.shape[1]:
            raise args.error("x", f"at most {self.layout.shape[1] * self.block_size} tokens long (the layout's "
                             f"{self.layout.shape[1]} blocks of {self.block_size})", f"{length} tokens")

        def heads(t: Tensor) -> Tensor:  # [B, T, E] -> [B, H, T, E / H], a view
            return t.view(batch, length, self.num_heads, -1).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        out = ops.block_sparse_attention(q, k, v, self.layout[:, :n_blocks, :n_blocks], block_size=self.block_size,
                                         causal=self.causal, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, self.embed_dim))

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, n_blocks={self.layout.shape[1]}, "
                f"block_size={self.block_size}, causal={self.causal}, dropout={self.dropout}")
