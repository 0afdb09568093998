"""Exact attention benchmarks: ``fusednn.ops.attention`` against torch's strongest paths.

Cases (bf16, model dim 2048 so H = 2048 // D, a constant 16384 tokens so B = 16384 // T),
from the registry (``fusednn.cases.exact_attention``): D in {64, 128}, T in 512..16384,
causal and not, and a causal sliding window of W = 1024 keys (the query's own key included:
``window=(W - 1, 0)``), each a shape ``{"T", "D", "causal"[, "window"]}`` of the op
``attention``. B and H are recorded in each row's ``derived``.

Providers: ``fusednn``; ``sdpa_flash`` / ``sdpa_efficient`` / ``sdpa_cudnn``
(``F.scaled_dot_product_attention`` pinned to one backend with ``sdpa_kernel``); ``flex``
(``flex_attention`` under ``torch.compile``, with its ``BlockMask`` built once per shape,
outside the timing). SDPA has no sliding-window mask: window shapes run fusednn and flex.

FLOPs follow FlashAttention: fwd = 4·B·H·Tq·Tk·D, halved when causal; the window counts its
visible (i, j) pairs exactly, sum_i min(i + 1, W), times 4·B·H·D. bwd = 2.5 × fwd (it
recomputes QK^T), fwd+bwd = 3.5 × fwd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fusednn

from .runner import Case, compiled, register

DTYPE = torch.bfloat16
TOKENS, MODEL_DIM = 16384, 2048
MODE_FLOPS = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}  # multiples of the forward's FLOPs


def attention_flops(B: int, H: int, T: int, D: int, causal: bool, window: int | None = None) -> float:
    """Forward FLOPs (FlashAttention convention) of self-attention over T tokens."""
    if window is not None:  # causal sliding window of `window` keys: row i sees min(i + 1, window)
        n = min(T, window)
        pairs = n * (n + 1) // 2 + (T - n) * window
    else:
        pairs = T * T * (0.5 if causal else 1.0)
    return 4.0 * B * H * D * pairs


def _causal_mask(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def _window_mask(window: int):
    def mask(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < window)

    return mask


def _sdpa(backend, causal: bool):
    from torch.nn.attention import sdpa_kernel

    def fn(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return fn


def _flex(mask_mod, T: int, device: torch.device):
    """The compiled flex_attention with its BlockMask for T x T, built here, once per shape."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = compiled(flex_attention)
    block_mask = None if mask_mod is None else create_block_mask(mask_mod, None, None, T, T, device=device)
    return lambda q, k, v: flex(q, k, v, block_mask=block_mask)


def _providers(device: torch.device, T: int, causal: bool, window: int | None) -> dict:
    """name -> build(): build() returns fn(q, k, v) -> out; the harness runs it in its set-up guard."""
    if window is not None:
        return {
            "fusednn": lambda: lambda q, k, v: fusednn.ops.attention(q, k, v, causal=True, window=(window - 1, 0)),
            "flex": lambda: _flex(_window_mask(window), T, device),
        }
    from torch.nn.attention import SDPBackend

    return {
        "fusednn": lambda: lambda q, k, v: fusednn.ops.attention(q, k, v, causal=causal),
        "sdpa_flash": lambda: _sdpa(SDPBackend.FLASH_ATTENTION, causal),
        "sdpa_efficient": lambda: _sdpa(SDPBackend.EFFICIENT_ATTENTION, causal),
        "sdpa_cudnn": lambda: _sdpa(SDPBackend.CUDNN_ATTENTION, causal),
        "flex": lambda: _flex(_causal_mask if causal else None, T, device),
    }


@register("attention")
def attention(shape: dict, device: torch.device) -> Case:
    T, D, causal, window = shape["T"], shape["D"], shape.get("causal", False), shape.get("window")
    B, H = TOKENS // T, MODEL_DIM // D
    q, k, v = (torch.randn(B, H, T, D, device=device, dtype=DTYPE, requires_grad=True) for _ in range(3))
    forward = attention_flops(B, H, T, D, causal, window)
    return Case(DTYPE, (q, k, v), _providers(device, T, causal, window),
                flops={mode: factor * forward for mode, factor in MODE_FLOPS.items()}, derived={"B": B, "H": H})
