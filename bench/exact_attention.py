"""Exact attention benchmarks: ``fusednn.ops.attention`` against torch's strongest paths.

Cases (bf16, model dim 2048 so H = 2048 // D, a constant 16384 tokens so B = 16384 // T):

* ``attention``: D in {64, 128}, T in 512..16384, causal and not. Providers: ``fusednn``;
  ``sdpa_flash`` / ``sdpa_efficient`` / ``sdpa_cudnn`` (``F.scaled_dot_product_attention``
  pinned to one backend with ``sdpa_kernel``); ``flex`` (``flex_attention`` under
  ``torch.compile``, with a causal ``BlockMask`` built once per shape, outside the timing).
* ``attention_window``: a causal sliding window of W = 1024 keys (the query's own key
  included: ``window=(W - 1, 0)``), D = 128, T in {4096, 16384}; ``fusednn`` and ``flex``
  with the same mask. SDPA has no sliding-window mask and is not run.

Modes as in the other families: ``fwd`` under no_grad, ``bwd`` = ``autograd.grad`` through a
retained graph, ``fwd+bwd`` both. FLOPs follow FlashAttention: fwd = 4·B·H·Tq·Tk·D, halved
when causal; the window counts its visible (i, j) pairs exactly, sum_i min(i + 1, W), times
4·B·H·D. bwd = 2.5 × fwd (it recomputes QK^T), fwd+bwd = 3.5 × fwd.
A provider that cannot run a case (backend unavailable, compile failure) is reported as
skipped and the run goes on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fusednn

from .runner import Context, register

DTYPE = torch.bfloat16
TOKENS, MODEL_DIM, WINDOW = 16384, 2048, 1024
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


_compiled_flex = None


def _flex(mask_mod, T: int, device: torch.device):
    """The compiled flex_attention with its BlockMask for T x T, built here, once per shape."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    block_mask = None if mask_mod is None else create_block_mask(mask_mod, None, None, T, T, device=device)
    return lambda q, k, v: _compiled_flex(q, k, v, block_mask=block_mask)


def _providers(device: torch.device, T: int, causal: bool, window: int | None) -> dict:
    """name -> build(): build() returns fn(q, k, v) -> out; it runs inside the set-up guard."""
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


def _run_case(ctx: Context, op: str, shape: dict, providers: dict, fwd_flops: float) -> None:
    """Time every provider of one shape in the three modes."""
    B, H, T, D = shape["B"], shape["H"], shape["T"], shape["D"]
    q, k, v = (torch.randn(B, H, T, D, device=ctx.device, dtype=DTYPE, requires_grad=True) for _ in range(3))
    for name, build in providers.items():
        try:  # set-up and a first call (compiles; fails here if the backend cannot run the case)
            fn = build()
            out = fn(q, k, v)
        except Exception as exc:
            why = str(exc).splitlines()[0][:120] if str(exc) else ""
            ctx.skip(f"{op} {name}", f"{' '.join(f'{a}={b}' for a, b in shape.items())}: {type(exc).__name__}: {why}")
            continue
        dout = torch.randn_like(out)

        def forward(fn=fn):
            with torch.no_grad():
                return fn(q, k, v)

        def backward(out=out, dout=dout):
            torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)

        def forward_backward(fn=fn, dout=dout):
            torch.autograd.grad(fn(q, k, v), (q, k, v), dout)

        for mode, f in (("fwd", forward), ("bwd", backward), ("fwd+bwd", forward_backward)):
            ctx.measure(op=op, mode=mode, dtype=DTYPE, shape=shape, provider=name, fn=f,
                        flops=MODE_FLOPS[mode] * fwd_flops)
        del fn, out, dout, forward, backward, forward_backward


@register("attention")
def bench_attention(ctx: Context) -> None:
    if not ctx.is_cuda:
        ctx.skip("attention", "the Triton kernels need a GPU (the CPU path is the PyTorch reference)")
        return
    if ctx.quick:
        dims, seqlens, window_seqlens = (128,), (2048, 8192), (16384,)
    else:
        dims, seqlens, window_seqlens = (64, 128), (512, 1024, 2048, 4096, 8192, 16384), (4096, 16384)
    cases = [(D, T, causal, None) for D in dims for T in seqlens for causal in (False, True)]
    cases += [(128, T, True, WINDOW) for T in window_seqlens]
    ctx.skip("attention_window sdpa_flash", "SDPA has no sliding-window mask")
    # flex_attention recompiles per shape and grad mode (dynamic=False): allow them all.
    with torch._dynamo.config.patch(recompile_limit=4 * len(cases)):
        for D, T, causal, window in cases:
            B, H = TOKENS // T, MODEL_DIM // D
            shape = {"B": B, "H": H, "T": T, "D": D, "causal": causal}
            if window is not None:
                shape["window"] = window
            op = "attention" if window is None else "attention_window"
            _run_case(ctx, op, shape, _providers(ctx.device, T, causal, window),
                      attention_flops(B, H, T, D, causal, window))
            torch.cuda.empty_cache()
