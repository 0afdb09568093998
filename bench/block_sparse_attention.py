"""Block-sparse attention benchmarks: ``fusednn.ops.block_sparse_attention`` against
FlexAttention with the same layout as its ``BlockMask``, and against dense exact attention.

Cases (bf16, H = 16, a constant 16384 tokens so B = 16384 // T, blocks of 64), from the
registry (``fusednn.cases.block_sparse_attention``): T in {4k, 16k}, D in {64, 128}, and two
layouts of ``fusednn.ops.sparsity``: ``"bigbird"`` (not causal: a window of 3 blocks, one
global block, and random blocks up to about 10% density) and ``"local"`` (causal: a window of
16 blocks, 1024 keys). The density is recorded in each row's ``derived``.

Providers: ``fusednn``; ``flex`` (``flex_attention`` under ``torch.compile`` with a
``BlockMask`` of the layout, built once per shape outside the timing); ``dense_fusednn``
(``fusednn.ops.attention``, causal for the causal layout) and ``sdpa_flash`` (torch's flash
SDPA): the dense computation a sparse layout saves.

FLOPs count the visible (query, key) pairs of the layout (causal diagonal blocks halved):
fwd = 4·B·H·D·pairs; bwd = 2.5 × fwd; fwd+bwd = 3.5 × fwd. The dense providers are timed
on the same count, so their TFLOP/s shows the work they do not need to do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fusednn
from fusednn.ops import sparsity

from .exact_attention import MODE_FLOPS, _flex
from .runner import Case, register

DTYPE = torch.bfloat16
TOKENS, HEADS, BLOCK = 16384, 16, 64
LOCAL_WINDOW_BLOCKS = 16
DENSITY = 0.10


def bench_layout(kind: str, n_blocks: int) -> tuple[torch.Tensor, bool]:
    """(layout [1, n, n], causal) of a benchmark layout kind."""
    if kind == "local":
        return sparsity.local_layout(n_blocks, LOCAL_WINDOW_BLOCKS, causal=True), True
    window, global_blocks = 3, 1
    random_blocks = max(0, round(DENSITY * n_blocks) - window - 2 * global_blocks)
    return sparsity.bigbird_layout(n_blocks, window, global_blocks, random_blocks, seed=0), False


def _visible_pairs(layout: torch.Tensor, causal: bool) -> float:
    blocks = float(layout.sum())
    if causal:  # a diagonal block holds BLOCK (BLOCK + 1) / 2 visible pairs
        diagonal = float(layout[0].diagonal().sum())
        return (blocks - diagonal) * BLOCK * BLOCK + diagonal * BLOCK * (BLOCK + 1) / 2
    return blocks * BLOCK * BLOCK


@register("block_sparse_attention")
def block_sparse_attention(shape: dict, device: torch.device) -> Case:
    T, D = shape["T"], shape["D"]
    B, n_blocks = TOKENS // T, T // BLOCK
    layout, causal = bench_layout(shape["layout"], n_blocks)
    layout = layout.to(device)
    q, k, v = (torch.randn(B, HEADS, T, D, device=device, dtype=DTYPE, requires_grad=True) for _ in range(3))

    def block_mask_mod(b, h, q_idx, kv_idx):
        visible = layout[0, q_idx // BLOCK, kv_idx // BLOCK]
        return visible & (q_idx >= kv_idx) if causal else visible

    def sdpa_flash():
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def fn(q, k, v):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        return fn

    providers = {
        "fusednn": lambda: lambda q, k, v: fusednn.ops.block_sparse_attention(q, k, v, layout, block_size=BLOCK,
                                                                               causal=causal),
        "flex": lambda: _flex(block_mask_mod, T, device),
        "dense_fusednn": lambda: lambda q, k, v: fusednn.ops.attention(q, k, v, causal=causal),
        "sdpa_flash": sdpa_flash,
    }
    forward = 4.0 * B * HEADS * D * _visible_pairs(layout.cpu(), causal)
    density = float(layout.float().mean())
    return Case(DTYPE, (q, k, v), providers, flops={mode: factor * forward for mode, factor in MODE_FLOPS.items()},
                derived={"B": B, "H": HEADS, "block_size": BLOCK, "density": round(density, 4), "causal": causal})
