"""2-D pooling benchmarks: fusednn's Triton kernels against PyTorch eager and
``torch.compile`` (``dynamic=False``), bfloat16 channels_last ``[N, C, H, W]``, in bytes/s
and % of the device's measured copy bandwidth. Shapes from the registry
(``fusednn.cases.pooling``): ResNet's stem pooling (3x3, stride 2, padding 1 at
[N, 64, 112, 112]) for max and average pooling, a DenseNet transition (2x2, stride 2) for
the average, and the global average before ResNet-50's classifier ([N, 2048, 7, 7] to 1x1).

On the CPU the Triton kernels do not run (outside the interpreter): "fusednn" there is the
reference, torch's own functions, so the CPU rows time the dispatch around the same
computation.

Bytes every implementation must move (x is [N, C, H, W], y [N, C, OH, OW], both bf16):
fwd reads x and writes y; bwd reads dy and writes dx; fwd+bwd both. Max pooling's training
forward also writes its int64 argmax and the backward reads it back (8 bytes per output
element each way, in bwd and fwd+bwd); inference (fwd) keeps none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fusednn
from fusednn.ops.pooling import pooled_size

from .runner import Case, compiled, register

DTYPE = torch.bfloat16
INDEX_BYTES = 8  # torch's argmax is int64


def _input(shape: dict, device: torch.device) -> torch.Tensor:
    x = torch.randn(shape["N"], shape["C"], shape["H"], shape["W"], device=device, dtype=DTYPE)
    return x.to(memory_format=torch.channels_last).requires_grad_()


def _case(x: torch.Tensor, output_elements: int, ours, theirs, argmax: bool = False) -> Case:
    size = x.element_size()
    x_bytes, y_bytes = x.numel() * size, output_elements * size
    index_bytes = output_elements * INDEX_BYTES if argmax else 0
    forward, backward = x_bytes + y_bytes, y_bytes + x_bytes + index_bytes
    return Case(DTYPE, (x,), {"fusednn": lambda: ours, "torch": lambda: theirs,
                              "torch_compile": lambda: compiled(theirs)},
                nbytes={"fwd": forward, "bwd": backward, "fwd+bwd": forward + index_bytes + backward})


def _window(shape: dict) -> tuple[int, int, int]:
    return shape["kernel"], shape["stride"], shape["padding"]


def _pooled_elements(shape: dict) -> int:
    kernel, stride, padding = _window(shape)
    oh, ow = (pooled_size(shape[d], kernel, stride, padding, 1, False) for d in ("H", "W"))
    return shape["N"] * shape["C"] * oh * ow


@register("max_pool2d")
def max_pool2d(shape: dict, device: torch.device) -> Case:
    kernel, stride, padding = _window(shape)

    def ours(x):
        return fusednn.ops.max_pool2d(x, kernel, stride, padding)

    def theirs(x):
        return F.max_pool2d(x, kernel, stride, padding)

    return _case(_input(shape, device), _pooled_elements(shape), ours, theirs, argmax=True)


@register("avg_pool2d")
def avg_pool2d(shape: dict, device: torch.device) -> Case:
    kernel, stride, padding = _window(shape)

    def ours(x):
        return fusednn.ops.avg_pool2d(x, kernel, stride, padding)

    def theirs(x):
        return F.avg_pool2d(x, kernel, stride, padding)

    return _case(_input(shape, device), _pooled_elements(shape), ours, theirs)


@register("adaptive_avg_pool2d")
def adaptive_avg_pool2d(shape: dict, device: torch.device) -> Case:
    def ours(x):
        return fusednn.ops.adaptive_avg_pool2d(x, 1)

    def theirs(x):
        return F.adaptive_avg_pool2d(x, 1)

    return _case(_input(shape, device), shape["N"] * shape["C"], ours, theirs)
