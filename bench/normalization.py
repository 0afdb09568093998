"""LayerNorm / RMSNorm benchmarks: fusednn's Triton kernels against PyTorch eager and
torch.compile, in GB/s and % of the device's measured copy bandwidth."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fusednn

from .runner import Context, register

SHAPES = [(4096, 1024), (4096, 4096), (8192, 8192), (16384, 2048)]
QUICK_SHAPES = [(4096, 4096)]


def _bench_norm(ctx: Context, op: str, ours, theirs, with_bias: bool) -> None:
    if not ctx.is_cuda:
        ctx.skip(op, "the Triton kernels need a GPU (the CPU path is the PyTorch reference)")
        return
    dtype = torch.bfloat16
    compiled = torch.compile(theirs)
    for rows, n in QUICK_SHAPES if ctx.quick else SHAPES:
        shape = {"rows": rows, "N": n}
        x = torch.randn(rows, n, device=ctx.device, dtype=dtype, requires_grad=True)
        w = torch.randn(n, device=ctx.device, dtype=dtype, requires_grad=True)
        b = torch.randn(n, device=ctx.device, dtype=dtype, requires_grad=True) if with_bias else None
        dy = torch.randn_like(x)
        inputs = [x, w] + ([b] if with_bias else [])
        elt = x.element_size()
        # Bytes every implementation must move: fwd reads x, writes y; bwd reads x and dy, writes dx.
        io = {"fwd": 2 * rows * n * elt, "bwd": 3 * rows * n * elt, "fwd+bwd": 5 * rows * n * elt}
        for provider, fn in (("fusednn", ours), ("torch", theirs), ("torch_compile", compiled)):
            def forward(fn=fn):
                with torch.no_grad():
                    return fn(x, w, b)

            try:
                y = fn(x, w, b)
            except Exception as exc:  # e.g. torch.compile unavailable: reported, not fatal
                ctx.skip(f"{op} {provider}", f"{type(exc).__name__}: {exc}")
                continue

            def backward(y=y):
                torch.autograd.grad(y, inputs, dy, retain_graph=True)

            def forward_backward(fn=fn):
                torch.autograd.grad(fn(x, w, b), inputs, dy)

            for mode, f in (("fwd", forward), ("bwd", backward), ("fwd+bwd", forward_backward)):
                ctx.measure(op=op, mode=mode, dtype=dtype, shape=shape, provider=provider, fn=f, nbytes=io[mode])


@register("layer_norm")
def bench_layer_norm(ctx: Context) -> None:
    _bench_norm(
        ctx,
        "layer_norm",
        lambda x, w, b: fusednn.ops.layer_norm(x, (x.shape[-1],), w, b),
        lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b),
        with_bias=True,
    )


@register("rms_norm")
def bench_rms_norm(ctx: Context) -> None:
    _bench_norm(
        ctx,
        "rms_norm",
        lambda x, w, b: fusednn.ops.rms_norm(x, (x.shape[-1],), w),
        lambda x, w, b: F.rms_norm(x, (x.shape[-1],), w),
        with_bias=False,
    )
