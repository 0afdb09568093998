"""``LSHSelfAttention``: Reformer's self-attention layer on the fused op
``fusednn.ops.lsh_attention``: a shared query/key projection, a value projection, LSH attention
per head, an output projection.

torch has no such module, so this one is not a drop-in; its projections are ``torch.nn.Linear``
modules (their parameters, initialisation and state_dict keys are torch's).
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import ops
from .._validate import Args, dtype_name, shape_of
from ..ops.lsh_attention import check_options

__all__ = ["LSHSelfAttention"]

_WHERE = "fusednn.nn.LSHSelfAttention"


class LSHSelfAttention(torch.nn.Module):
    """Multi-head LSH self-attention (Reformer) over batch-first sequences::

        qk = x W_qk^T + b_qk,   v = x W_v^T + b_v          # [B, T, E], split into H heads of E // H
        o  = lsh_attention(qk, v) per head                  # shared query/key, see fusednn.ops.lsh_attention
        y  = o W_out^T + b_out                              # heads concatenated back to [B, T, E]

    Args:
        embed_dim: E, the model dim of the input and the output.
        num_heads: H, a divisor of embed_dim; each head has E // H dims.
        n_buckets: buckets per hash round, even and >= 2 (Reformer takes about 2T / chunk_size).
        n_hashes: hash rounds (default 1); more rounds, fewer missed neighbours.
        chunk_size: slots per chunk of the sorted sequence (default 64); each chunk attends to
            itself and the previous one.
        causal: each token attends only to earlier tokens (the first one to itself).
        bias: whether the three projections have biases (default True).
        device, dtype: of the parameters.

    Parameters: ``qk_proj``, ``v_proj`` and ``out_proj``, ``torch.nn.Linear(E, E)`` each.

    ``forward(x, rotations=None)``: x [B, T, E] of the parameters' dtype and device ->
    [B, T, E]. rotations [n_hashes, E // H, n_buckets // 2] (shared by every head); None
    draws fresh ones from torch's generator at every call, as Reformer does.
    """

    def __init__(self, embed_dim: int, num_heads: int, n_buckets: int, n_hashes: int = 1, chunk_size: int = 64,
                 causal: bool = False, bias: bool = True, device=None, dtype=None):
        super().__init__()
        args = Args(_WHERE)
        self.embed_dim = args.integer("embed_dim", embed_dim, minimum=1)
        self.num_heads = args.integer("num_heads", num_heads, minimum=1)
        if self.embed_dim % self.num_heads:
            raise args.error("num_heads", f"a divisor of embed_dim {self.embed_dim}", repr(self.num_heads))
        self.n_buckets, self.n_hashes, self.chunk_size, self.causal = check_options(args, n_buckets, n_hashes,
                                                                                    chunk_size, causal)
        args.boolean("bias", bias)
        factory = dict(bias=bias, device=device, dtype=dtype)
        self.qk_proj = torch.nn.Linear(self.embed_dim, self.embed_dim, **factory)
        self.v_proj = torch.nn.Linear(self.embed_dim, self.embed_dim, **factory)
        self.out_proj = torch.nn.Linear(self.embed_dim, self.embed_dim, **factory)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def extra_repr(self) -> str:
        s = f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, n_buckets={self.n_buckets}"
        s += f", n_hashes={self.n_hashes}, chunk_size={self.chunk_size}"
        if self.causal:
            s += ", causal=True"
        return s

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """[B, T, E] -> [B, H, T, E // H], a view (the op reads strides)."""
        return t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: torch.Tensor, rotations: Optional[torch.Tensor] = None) -> torch.Tensor:
        args = Args(_WHERE)
        args.tensor("x", x, "[B, T, E]", ndim=3, dtypes=None)
        weight = self.qk_proj.weight
        if x.dtype != weight.dtype:
            raise args.error("x", f"of the module's dtype {dtype_name(weight.dtype)}", dtype_name(x.dtype), TypeError)
        if x.device != weight.device:
            raise args.error("x", f"on the module's device {weight.device}", str(x.device))
        if x.shape[-1] != self.embed_dim:
            raise args.error("x", f"[B, T, E] with E = embed_dim = {self.embed_dim}", shape_of(x))
        out = ops.lsh_attention(self._heads(self.qk_proj(x)), self._heads(self.v_proj(x)), n_buckets=self.n_buckets,
                                n_hashes=self.n_hashes, chunk_size=self.chunk_size, causal=self.causal,
                                rotations=rotations)
        return self.out_proj(out.transpose(1, 2).flatten(-2))
