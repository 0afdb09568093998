"""conv2d benchmarks: ``fusednn.ops.conv2d`` (the implicit-GEMM Triton kernels with the
fused epilogue) against cuDNN and torch.compile, on ResNet-50's convolutions.

Every provider computes ``relu(conv2d(x, w) * scale + shift + residual)``: a convolution
with a folded BatchNorm (per-channel scale and shift), the residual of a bottleneck block
and a ReLU. Shapes from the registry (``fusednn.cases.conv2d``): ``{"N", "C_in", "C_out",
"H", "k", "stride", "dtype"}`` (input H x H, a k x k kernel, padding k // 2); on the GPU
ResNet-50's convolutions (the 7x7/2 stem, the 1x1 and 3x3 convolutions of the bottleneck
blocks at 56, 28, 14 and 7, a strided 3x3) at batch 32 in bfloat16 (quick) and at batch 128
in bfloat16 and float16 (full). Every tensor is channels_last, weights included (as
``model.to(memory_format=torch.channels_last)`` leaves them); scale, shift and the
residual require grad with the input and the weight.

Providers: ``fusednn``; ``torch``: cuDNN's ``F.conv2d`` and the epilogue as eager
elementwise ops; ``torch_compile``: the same function under
``torch.compile(mode="max-autotune-no-cudagraphs", dynamic=False)`` (Inductor fuses the
epilogue and autotunes its Triton convolution templates against cuDNN).

On the CPU (tiny shapes, float32) fusednn runs its plain-PyTorch reference (benchmarks do
not run Triton's interpreter), so the CPU rows time the reference, not a kernel.

FLOPs: fwd = 2 N H_out W_out C_out C_in kh kw / groups (the epilogue's few per output are
not counted); bwd = 2 x fwd (the input and the weight gradients); fwd+bwd = 3 x fwd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fusednn

from .runner import Case, compiled, register

MODE_FLOPS = {"fwd": 1.0, "bwd": 2.0, "fwd+bwd": 3.0}  # multiples of the forward's FLOPs


def conv2d_flops(batch: int, c_in: int, c_out: int, h_out: int, w_out: int, kh: int, kw: int,
                 groups: int = 1) -> float:
    """Forward FLOPs of a convolution: a multiply-add per weight per output pixel."""
    return 2.0 * batch * h_out * w_out * c_out * (c_in // groups) * kh * kw


def _per_channel(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1)


@register("conv2d")
def conv2d(shape: dict, device: torch.device) -> Case:
    n, c_in, c_out, h, k, stride = (shape[key] for key in ("N", "C_in", "C_out", "H", "k", "stride"))
    dtype = getattr(torch, shape["dtype"])
    padding = k // 2
    h_out = (h + 2 * padding - k) // stride + 1
    cl = torch.channels_last

    def tensor(*size, scale=1.0):
        t = (scale * torch.randn(size, device=device)).to(dtype)
        return (t.contiguous(memory_format=cl) if t.dim() == 4 else t).requires_grad_()

    x = tensor(n, c_in, h, h)
    w = tensor(c_out, c_in, k, k, scale=(c_in * k * k) ** -0.5)
    scale = (1.0 + tensor(c_out, scale=0.1)).detach().requires_grad_()
    shift = tensor(c_out, scale=0.1)
    residual = tensor(n, c_out, h_out, h_out)

    def fused(x, w, scale, shift, residual):
        return fusednn.ops.conv2d(x, w, None, stride, padding, scale=scale, shift=shift, residual=residual,
                                  activation="relu")

    def eager(x, w, scale, shift, residual):
        y = F.conv2d(x, w, None, stride, padding)
        return F.relu(y * _per_channel(scale) + _per_channel(shift) + residual)

    flops = conv2d_flops(n, c_in, c_out, h_out, h_out, k, k)
    return Case(dtype, (x, w, scale, shift, residual),
                {"fusednn": lambda: fused, "torch": lambda: eager,
                 "torch_compile": lambda: compiled(eager, mode="max-autotune-no-cudagraphs")},
                flops={mode: m * flops for mode, m in MODE_FLOPS.items()}, derived={"H_out": h_out})
