"""Linear attention benchmark: ``fusednn.ops.linear_attention`` (the chunked kernels) against
flash-linear-attention's chunked kernels when ``fla`` is installed, and against exact causal
attention (``fusednn.ops.attention(causal=True)`` and torch's SDPA), so the sequence length
where linear attention starts to win shows. Shapes from the registry
(``fusednn.cases.linear_attention``), each ``{"T", "D"[, "decay"]}``: bf16, H = 16 heads of
head dim D, B = 32768 // T sequences (32k tokens per call), q, k, v stored [B, T, H, D] (the
layout a projection gives; fusednn and fla read it in place, the exact-attention providers
take it transposed to [B, H, T, D] as their inputs).

Providers: ``fusednn`` (feature map identity, no normalisation, the decay when the shape has
one: the computation fla's kernels do); ``fla`` (``fla.ops.linear_attn.chunk_linear_attn``
without normalisation, or ``fla.ops.retention.chunk_retention`` with a decay, whose per-head
decays are RetNet's); ``fusednn_exact`` (``fusednn.ops.attention(causal=True)``) and
``sdpa`` (``F.scaled_dot_product_attention(is_causal=True)``). On the CPU fusednn runs its
reference (the kernels need a GPU) and fla is absent: those rows time the recurrence.

Rows report the bytes every implementation must move at least (fwd: read q, k, v, write o;
bwd: read q, k, v, do, write dq, dk, dv; fwd+bwd both) as an effective bandwidth: exact and
linear attention do different FLOPs, so time is the comparison.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

import fusednn

from .runner import Case, register

TOKENS, HEADS = 32768, 16
MODE_TENSORS = {"fwd": 4, "bwd": 7, "fwd+bwd": 11}  # [B, T, H, D] tensors read or written


def _fused(decay):
    def fn(q, k, v):
        return fusednn.ops.linear_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                            feature_map="identity", normalize=False, decay=decay, algorithm="chunk")

    return fn


def _fla(decay: bool):
    """fla's chunked kernel on [B, T, H, D] tensors (ImportError when fla is not installed)."""
    if decay:
        from fla.ops.retention import chunk_retention

        return lambda q, k, v: chunk_retention(q, k, v)[0]
    from fla.ops.linear_attn import chunk_linear_attn

    return lambda q, k, v: chunk_linear_attn(q, k, v, normalize=False)[0]


def _exact(q, k, v):
    return fusednn.ops.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)


@register("linear_attention")
def linear_attention(shape: dict, device: torch.device) -> Case:
    T, D, with_decay = shape["T"], shape["D"], shape.get("decay", False)
    B = max(1, TOKENS // T) if device.type == "cuda" else 1
    H = HEADS if device.type == "cuda" else 2
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = (torch.randn(B, T, H, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    # RetNet's per-head decays 1 - 2^(-5 - h) (what fla's chunk_retention uses)
    decay = (1 - 2.0 ** (-5.0 - torch.arange(H, device=device, dtype=torch.float32))) if with_decay else None
    providers = {"fusednn": lambda: _fused(decay), "fusednn_exact": lambda: _exact, "sdpa": lambda: _sdpa}
    if importlib.util.find_spec("fla") is not None:
        providers["fla"] = lambda: _fla(with_decay)
    size = B * T * H * D * q.element_size()
    return Case(dtype, (q, k, v), providers, nbytes={mode: n * size for mode, n in MODE_TENSORS.items()},
                derived={"B": B, "H": H})
