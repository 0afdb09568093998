"""Depthwise conv2d benchmark: ``fusednn.ops.depthwise_conv2d`` (direct Triton kernels, the
epilogue fused) against PyTorch eager (``torch``: cuDNN's ``F.conv2d(groups=C)``, then the
epilogue as separate elementwise ops) and ``torch.compile`` of the same (``dynamic=False``).
Shapes from the registry (``fusednn.cases.depthwise_conv2d``): ``{"N", "C", "H", "k",
"epilogue"[, "dtype"]}``, a square H x H map, a k x k filter, stride 1 and "same" padding;
``epilogue`` "bias" (ConvNeXt's depthwise 7 x 7) or "bn" (RepLKNet's large filter with its
BatchNorm folded into scale and shift, no bias).

GPU: bfloat16 (float16 where the shape says so) channels_last. CPU: tiny float32 shapes,
where fusednn runs its plain-PyTorch reference (Triton needs a GPU there), so the CPU rows
measure the reference, not the kernels.

Work counted: FLOPs 2·N·C·H·W·k² for the forward, twice that for the backward (the input
and the filter gradients), three times for fwd+bwd; bytes, in units of one [N, C, H, W]
tensor, 2 for the forward (read x, write y), 3 for the backward (read dy and x, write dx)
and 5 for both; the filters and per-channel parameters are negligible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fusednn

from .runner import Case, compiled, register

MODE_FLOPS = {"fwd": 1.0, "bwd": 2.0, "fwd+bwd": 3.0}  # multiples of the forward's FLOPs
MODE_TENSORS = {"fwd": 2, "bwd": 3, "fwd+bwd": 5}  # [N, C, H, W] tensors read or written


def depthwise_flops(n: int, c: int, h: int, w: int, kh: int, kw: int) -> float:
    """Forward FLOPs of a depthwise convolution with an H x W output (a multiply and an add per tap)."""
    return 2.0 * n * c * h * w * kh * kw


def _fused(x, w, *params):
    if len(params) == 1:
        return fusednn.ops.depthwise_conv2d(x, w, params[0], padding="same")
    scale, shift = params
    return fusednn.ops.depthwise_conv2d(x, w, padding="same", scale=scale, shift=shift)


def _eager(x, w, *params):
    if len(params) == 1:
        return F.conv2d(x, w, params[0], padding="same", groups=x.shape[1])
    scale, shift = params
    return F.conv2d(x, w, None, padding="same", groups=x.shape[1]) * scale[:, None, None] + shift[:, None, None]


@register("depthwise_conv2d")
def depthwise_conv2d(shape: dict, device: torch.device) -> Case:
    n, c, h, k = shape["N"], shape["C"], shape["H"], shape["k"]
    dtype = getattr(torch, shape.get("dtype", "bfloat16")) if device.type == "cuda" else torch.float32
    x = torch.randn(n, c, h, h, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = (torch.randn(c, 1, k, k, device=device, dtype=dtype) / k).requires_grad_()
    if shape["epilogue"] == "bias":
        params = (torch.randn(c, device=device, dtype=dtype, requires_grad=True),)
    else:
        params = tuple(torch.randn(c, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    providers = {"fusednn": lambda: _fused, "torch": lambda: _eager, "torch_compile": lambda: compiled(_eager)}
    forward = depthwise_flops(n, c, h, h, k, k)
    size = x.numel() * x.element_size()
    return Case(dtype, (x, w) + params, providers,
                flops={mode: factor * forward for mode, factor in MODE_FLOPS.items()},
                nbytes={mode: count * size for mode, count in MODE_TENSORS.items()})
