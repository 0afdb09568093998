"""LSH attention benchmark: ``fusednn.ops.lsh_attention`` against exact shared-QK attention over
the same tokens, by ``fusednn.ops.attention`` and by torch's ``F.scaled_dot_product_attention``.

Shapes from the registry (``fusednn.cases.lsh_attention``), each ``{"T", "D", "n_hashes",
"causal"}``: a constant 16384 tokens (B = 16384 // T) of H = 8 heads, Reformer's chunks of 64 and
n_buckets = T // 64. GPU: bfloat16, T in {4096, 16384}. CPU: float32, T in {256, 512}, D = 32;
there fusednn runs its plain-PyTorch references (its Triton kernels need a GPU), so the CPU rows
time references, not kernels. The rotations are drawn once per shape, outside the timing.

Providers, all called as fn(qk, v): ``fusednn`` (LSH); ``exact_fusednn`` and ``exact_sdpa``: the
exact attention LSH approximates, queries qk and keys qk / ||qk|| (the normalisation is part of
their timing, as it is of LSH's), causal when the shape is; without the self-mask (the
difference in work is one key per query).

FLOPs are LSH's, 4·D per (query, key) pair a round visits: chunk 0 sees itself, every other chunk
itself and the previous one (C^2 + (T - C) 2C pairs per round with C = 64), halved when causal,
times n_hashes; bwd = 2.5 × fwd. The exact providers do about T / (2 C n_hashes) times more
work, so their TFLOP/s column understates them: compare times (the ratio table).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fusednn

from .runner import Case, register

TOKENS, HEADS, CHUNK = 16384, 8, 64
MODE_FLOPS = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}  # multiples of the forward's FLOPs


def lsh_flops(B: int, H: int, T: int, D: int, n_hashes: int, causal: bool, chunk: int = CHUNK) -> float:
    """Forward FLOPs (4·D per visited pair) of LSH attention over T tokens."""
    chunk = min(chunk, T)
    pairs = chunk * chunk + (T - chunk) * 2 * chunk
    return 4.0 * B * H * D * n_hashes * pairs * (0.5 if causal else 1.0)


def _exact(attention, causal: bool):
    def fn(qk, v):
        return attention(qk, F.normalize(qk, dim=-1), v, causal)

    return fn


def _sdpa(q, k, v, causal):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def _fusednn_exact(q, k, v, causal):
    return fusednn.ops.attention(q, k, v, causal=causal)


@register("lsh_attention")
def lsh_attention(shape: dict, device: torch.device) -> Case:
    T, D, n_hashes, causal = shape["T"], shape["D"], shape["n_hashes"], shape["causal"]
    B = max(1, TOKENS // T) if device.type == "cuda" else 1
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n_buckets = max(2, T // CHUNK)
    qk, v = (torch.randn(B, HEADS, T, D, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    rotations = torch.randn(n_hashes, D, n_buckets // 2, device=device)

    def lsh(qk, v):
        return fusednn.ops.lsh_attention(qk, v, n_buckets=n_buckets, n_hashes=n_hashes, chunk_size=CHUNK,
                                         causal=causal, rotations=rotations)

    forward = lsh_flops(B, HEADS, T, D, n_hashes, causal)
    return Case(dtype, (qk, v),
                {"fusednn": lambda: lsh, "exact_fusednn": lambda: _exact(_fusednn_exact, causal),
                 "exact_sdpa": lambda: _exact(_sdpa, causal)},
                flops={mode: factor * forward for mode, factor in MODE_FLOPS.items()},
                derived={"B": B, "H": HEADS, "n_buckets": n_buckets, "chunk_size": CHUNK})
