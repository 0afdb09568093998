"""Plain-PyTorch linear attention, written as the recurrence it defines.

With φ the feature map, ``scale`` applied to φ(q) and γ the per-head decay, step t of a
causal sequence is::

    S_t = γ S_{t-1} + φ(k_t) v_tᵀ                    # [Dk, Dv]
    z_t = γ z_{t-1} + φ(k_t)                         # [Dk]
    o_t = (scale φ(q_t))ᵀ S_t / ((scale φ(q_t))ᵀ z_t + eps)    normalize=True
    o_t = (scale φ(q_t))ᵀ S_t                                   normalize=False

from (S_0, z_0) = ``initial_state`` or zeros. Without ``causal`` every query sees the sums
over the whole sequence, S = S_0 + Σ_t φ(k_t) v_tᵀ and z = z_0 + Σ_t φ(k_t), and the decay
does not apply. Packed variable-length batches (``cu_seqlens``) run each sequence on its own.
Computed in float32 (float64 for float64 inputs), or with ``upcast=False`` in the inputs'
own dtype (PyTorch's computation in that precision: the low-precision baseline of the tests);
o comes back in v's dtype, the states in the compute dtype. Autograd comes from PyTorch.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .._validate import accumulate_dtype

__all__ = ["linear_attention", "linear_attention_feature_map"]

FEATURE_MAPS = ("elu+1", "relu", "identity")


def linear_attention_feature_map(x: torch.Tensor, feature_map: str) -> torch.Tensor:
    """φ(x): ``"elu+1"`` elu(x) + 1 (positive), ``"relu"`` max(x, 0), ``"identity"`` x."""
    if feature_map == "elu+1":
        return F.elu(x) + 1.0
    if feature_map == "relu":
        return F.relu(x)
    if feature_map == "identity":
        return x
    raise ValueError(f"feature_map must be one of {FEATURE_MAPS}; got {feature_map!r}")


def _state_parts(initial_state, normalize: bool):
    """(S_0, z_0) of an initial state given as (S_0, z_0), (S_0,), (S_0, None) or S_0."""
    if initial_state is None:
        return None, None
    if isinstance(initial_state, torch.Tensor):
        return initial_state, None
    parts = tuple(initial_state) + (None,)
    return parts[0], parts[1] if normalize else None


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    feature_map: str = "elu+1",
    causal: bool = True,
    normalize: bool = True,
    decay: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    initial_state=None,
    output_final_state: bool = False,
    eps: float = 1e-6,
    cu_seqlens: Optional[torch.Tensor] = None,
    upcast: bool = True,
):
    """Linear attention by its recurrence (see the module docstring).

    q, k: [B, H, T, Dk]; v: [B, H, T, Dv]; decay: [H] in (0, 1] or None; initial_state:
    (S_0 [B, H, Dk, Dv], z_0 [B, H, Dk]) with normalize, (S_0,) without. With cu_seqlens
    (int [N + 1]) the input is packed [1, H, total, D] and the states are [N, H, ...].
    Returns o [B, H, T, Dv], and with output_final_state also the final state, (S, z) with
    normalize and (S,) without. ``upcast=False`` computes in q's dtype instead of float32.
    """
    compute = accumulate_dtype(q.dtype) if upcast else q.dtype
    s0, z0 = _state_parts(initial_state, normalize)
    if cu_seqlens is None:
        o, s, z = _sequence(q, k, v, feature_map, causal, normalize, decay, scale, s0, z0, eps, compute)
    else:
        offsets = [int(x) for x in cu_seqlens.tolist()]
        pieces = []
        for n, (start, end) in enumerate(zip(offsets[:-1], offsets[1:])):
            pieces.append(_sequence(
                q[:, :, start:end], k[:, :, start:end], v[:, :, start:end], feature_map, causal, normalize,
                decay, scale, None if s0 is None else s0[n:n + 1], None if z0 is None else z0[n:n + 1], eps,
                compute))
        o = torch.cat([p[0] for p in pieces], dim=2) if pieces else v[:, :, :0].clone()
        s = (torch.cat([p[1] for p in pieces]) if pieces
             else v.new_zeros(0, q.shape[1], q.shape[-1], v.shape[-1], dtype=compute))
        z = torch.cat([p[2] for p in pieces]) if pieces else v.new_zeros(0, q.shape[1], q.shape[-1], dtype=compute)
    if not output_final_state:
        return o
    return o, ((s, z) if normalize else (s,))


def _sequence(q, k, v, feature_map, causal, normalize, decay, scale, s0, z0, eps, compute):
    batch, heads, length, dk = q.shape
    dv = v.shape[-1]
    scale = dk ** -0.5 if scale is None else scale
    fq = linear_attention_feature_map(q.to(compute), feature_map) * scale
    fk = linear_attention_feature_map(k.to(compute), feature_map)
    vc = v.to(compute)
    s = q.new_zeros(batch, heads, dk, dv, dtype=compute) if s0 is None else s0.to(compute)
    z = q.new_zeros(batch, heads, dk, dtype=compute) if z0 is None else z0.to(compute)
    if not causal:
        s = s + fk.transpose(-1, -2) @ vc
        z = z + fk.sum(2)
        numerator = fq @ s  # [B, H, T, Dv]
        denominator = (fq * z.unsqueeze(2)).sum(-1, keepdim=True)
    else:
        gamma = None if decay is None else decay.to(compute).view(1, heads, 1)
        numerators, denominators = [], []
        for t in range(length):
            if gamma is not None:
                s = gamma.unsqueeze(-1) * s
                z = gamma * z
            s = s + fk[:, :, t, :, None] * vc[:, :, t, None, :]
            z = z + fk[:, :, t]
            numerators.append((fq[:, :, t, :, None] * s).sum(-2))
            denominators.append((fq[:, :, t] * z).sum(-1, keepdim=True))
        empty = q.new_zeros(batch, heads, 0, dv, dtype=compute)
        numerator = torch.stack(numerators, 2) if length else empty
        denominator = torch.stack(denominators, 2) if length else empty[..., :1]
    o = numerator / (denominator + eps) if normalize else numerator
    return o.to(v.dtype), s, z
