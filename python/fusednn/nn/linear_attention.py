"""``LinearAttention``: multi-head linear attention (Katharopoulos et al., 2020) with
optional RetNet decay (Sun et al., 2023) on the fused op ``fusednn.ops.linear_attention``,
with a recurrent ``step`` for decoding in O(1) per token.

torch has no such module, so this one is not a drop-in. Its projections are
``torch.nn.Linear(embed_dim, embed_dim)`` modules named ``q_proj``, ``k_proj``,
``v_proj`` and ``out_proj``, initialised as torch initialises them.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import ops
from .._validate import Args, dtype_name, shape_of
from ..reference.linear_attention import FEATURE_MAPS

__all__ = ["LinearAttention"]

_WHERE = "fusednn.nn.LinearAttention"
DECAYS = (None, "retnet")


def _retnet_decay(num_heads: int, device=None) -> torch.Tensor:
    """RetNet's fixed per-head decay γ_h = 1 - 2^(-5 - h), h = 0 .. num_heads-1: [H] float32
    (exact up to h = 19; float16 would round it to 1 from h = 7 on, bfloat16 from h = 4)."""
    return 1.0 - torch.exp2(-5.0 - torch.arange(num_heads, dtype=torch.float32, device=device))


class LinearAttention(torch.nn.Module):
    """Multi-head linear attention over a batch-first sequence::

        q, k, v = q_proj(x), k_proj(x), v_proj(x)          split into H heads of D = E / H
        S_t = γ S_{t-1} + φ(k_t) v_tᵀ,  z_t = γ z_{t-1} + φ(k_t)
        o_t = (s φ(q_t))ᵀ S_t / ((s φ(q_t))ᵀ z_t + 1e-6),  s = D^-1/2
        y = out_proj(o)                                     heads merged back to E

    (``fusednn.ops.linear_attention`` with ``normalize=True``). Without ``causal`` every
    position sees the whole sequence (S and z summed over all of it).

    Args:
        embed_dim: E, the input and output features; divisible by num_heads.
        num_heads: H; each head has D = E / H features.
        feature_map: φ, ``"elu+1"`` (default), ``"relu"`` or ``"identity"``.
        causal: position t sees positions 0 .. t only (default True).
        decay: None (γ = 1) or ``"retnet"``: head h decays its state by γ_h = 1 - 2^(-5 - h)
            per step (the buffer ``decay`` [H], float32 or float64: it keeps that dtype when
            the module moves to a lower precision, which would round it). Needs causal.
        bias: whether the projections have biases (default True).
        device, dtype: of the parameters.

    ``forward(x, state=None, return_state=False)``: x [B, T, E] -> y [B, T, E] in x's dtype
    (the module's). ``state`` is the recurrent state before the sequence (None: zeros), the
    pair ``(S [B, H, D, D], z [B, H, D])`` a previous call returned, float32 (float64 for
    float64 modules); with ``return_state`` returns ``(y, state)``, the state after the
    last position, to continue the sequence with (causal only). q, k, v are views of the
    projections' [B, T, E] outputs (no copy); for backward the op keeps them, o and the
    normaliser's denominator [B, H, T], not the states inside the sequence (recomputed).

    ``step(x_t, state)``: one decoding step, x_t [B, E] -> ``(y_t [B, E], new_state)`` from
    ``state`` (None at the start): the cost of a step does not grow with the sequence.
    """

    def __init__(self, embed_dim: int, num_heads: int, feature_map: str = "elu+1", causal: bool = True,
                 decay: Optional[str] = None, bias: bool = True, device=None, dtype=None):
        super().__init__()
        args = Args(_WHERE)
        self.embed_dim = args.integer("embed_dim", embed_dim, minimum=1)
        self.num_heads = args.integer("num_heads", num_heads, minimum=1)
        if embed_dim % num_heads:
            raise args.error("embed_dim", f"divisible by num_heads = {num_heads}", repr(embed_dim))
        self.head_dim = embed_dim // num_heads
        self.feature_map = args.choice("feature_map", feature_map, FEATURE_MAPS)
        self.causal = args.boolean("causal", causal)
        args.choice("decay", decay, DECAYS)
        if decay is not None and not causal:
            raise args.error("decay", "None when causal=False (a decay orders the positions)", repr(decay))
        self.decay_kind = decay
        args.boolean("bias", bias)
        factory = dict(device=device, dtype=dtype)
        self.q_proj = torch.nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.k_proj = torch.nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.v_proj = torch.nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.out_proj = torch.nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        # A constant of the configuration: not in the state_dict.
        decay_buffer = None if decay is None else _retnet_decay(num_heads, device=self.q_proj.weight.device)
        if decay_buffer is not None and dtype == torch.float64:
            decay_buffer = decay_buffer.double()
        self.register_buffer("decay", decay_buffer, persistent=False)

    def _apply(self, fn, recurse=True):
        # Module.to(torch.bfloat16) converts every floating-point buffer: γ_h would round
        # to 1 from head 4 on. Low precisions keep the float32 decay.
        super()._apply(fn, recurse)
        if self.decay is not None and self.decay.dtype not in (torch.float32, torch.float64):
            self.decay = _retnet_decay(self.num_heads, device=self.decay.device)
        return self

    def extra_repr(self) -> str:
        s = f"{self.embed_dim}, num_heads={self.num_heads}, feature_map={self.feature_map!r}"
        if not self.causal:
            s += ", causal=False"
        if self.decay_kind is not None:
            s += f", decay={self.decay_kind!r}"
        if self.q_proj.bias is None:
            s += ", bias=False"
        return s

    def _check_input(self, args: Args, name: str, t, doc: str, ndim: int) -> None:
        args.tensor(name, t, doc, ndim=ndim, dtypes=None)
        weight = self.q_proj.weight
        if t.dtype != weight.dtype:
            raise args.error(name, f"of the module's dtype {dtype_name(weight.dtype)}", dtype_name(t.dtype), TypeError)
        if t.device != weight.device:
            raise args.error(name, f"on the module's device {weight.device}", str(t.device))
        if t.shape[-1] != self.embed_dim:
            raise args.error(name, f"{doc} with E = embed_dim = {self.embed_dim}", shape_of(t))

    def forward(self, x: torch.Tensor, state: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                return_state: bool = False):
        args = Args(_WHERE)
        self._check_input(args, "x", x, "[B, T, E]", 3)
        args.boolean("return_state", return_state)
        if return_state and not self.causal:
            raise args.error("return_state", "False when causal=False (no state continues a non-causal sequence)",
                             "True")
        B, T, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:  # [B, T, E] -> [B, H, T, D], a view
            return t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

        result = ops.linear_attention(heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)),
                                      feature_map=self.feature_map, causal=self.causal, decay=self.decay,
                                      initial_state=state, output_final_state=return_state)
        o, final_state = result if return_state else (result, None)
        y = self.out_proj(o.transpose(1, 2).reshape(B, T, self.embed_dim))
        return (y, final_state) if return_state else y

    def step(self, x_t: torch.Tensor, state: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
             ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One decoding step: ``(y_t [B, E], new_state)`` for ``x_t [B, E]`` after ``state``
        (None: the start of the sequence): ``forward`` of a one-position sequence (for which
        the op's ``"auto"`` runs its recurrent kernel), whose cost does not depend on the
        length of the sequence so far."""
        args = Args(f"{_WHERE}.step")
        if not self.causal:
            raise args.unsupported("step needs causal=True (a non-causal position sees the future)")
        self._check_input(args, "x_t", x_t, "[B, E]", 2)
        y, new_state = self(x_t.unsqueeze(1), state, return_state=True)
        return y.squeeze(1), new_state
