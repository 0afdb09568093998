"""Causal depthwise conv1d benchmark: ``fusednn.ops.causal_conv1d`` against PyTorch eager
(``F.conv1d`` of the left-padded input with groups=D, then ``F.silu``) and the same under
``torch.compile`` (``dynamic=False``). Shapes from the registry
(``fusednn.cases.causal_conv1d``), each ``{"B", "D", "L", "W"}``: x is a ``[B, L, D]``
activation seen as ``[B, D, L]`` (a Mamba block's layout, read in place by fusednn), with a
bias and silu.

GPU: bfloat16, B = 4, L = 2048, W = 4, D in {2048, 4096}. CPU: tiny float32 shapes; there
fusednn runs its plain-PyTorch reference (its Triton kernels need a GPU), so the CPU rows
time the reference, not a kernel.

Bytes every implementation must move (the [D, W] weight and the bias are negligible): fwd
reads x and writes y; bwd reads x and dy and writes dx; fwd+bwd both. Rows report GB/s and
the % of the device's copy bandwidth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fusednn

from .runner import Case, compiled, register

MODE_PASSES = {"fwd": 2, "bwd": 3, "fwd+bwd": 5}  # [B, D, L] tensors read or written


def _fused(x, weight, bias):
    return fusednn.ops.causal_conv1d(x, weight, bias, activation="silu")


def _torch(x, weight, bias):
    taps = weight.shape[1]
    return F.silu(F.conv1d(F.pad(x, (taps - 1, 0)), weight.unsqueeze(1), bias, groups=weight.shape[0]))


@register("causal_conv1d")
def causal_conv1d(shape: dict, device: torch.device) -> Case:
    B, D, L, W = shape["B"], shape["D"], shape["L"], shape["W"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    x = torch.randn(B, L, D, device=device, dtype=dtype).transpose(1, 2).requires_grad_()
    weight = (W**-0.5 * torch.randn(D, W, device=device, dtype=dtype)).requires_grad_()
    bias = (0.5 * torch.randn(D, device=device, dtype=dtype)).requires_grad_()
    size = B * D * L * x.element_size()
    return Case(dtype, (x, weight, bias),
                {"fusednn": lambda: _fused, "torch": lambda: _torch, "torch_compile": lambda: compiled(_torch)},
                nbytes={mode: k * size for mode, k in MODE_PASSES.items()})
