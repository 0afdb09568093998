"""LayerNorm / RMSNorm benchmarks: fusednn's Triton kernels against PyTorch eager and
``torch.compile`` (``dynamic=False``), bfloat16 ``[rows, N]``, in bytes/s and % of the
device's measured copy bandwidth. Shapes from the registry (``fusednn.cases.normalization``).

Bytes every implementation must move (the [N] parameters are negligible): fwd reads x and
writes y; bwd reads x and dy and writes dx; fwd+bwd both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fusednn

from .runner import Case, compiled, register

DTYPE = torch.bfloat16
MODE_PASSES = {"fwd": 2, "bwd": 3, "fwd+bwd": 5}  # [rows, N] tensors read or written


def _norm_case(shape: dict, device: torch.device, ours, theirs, params: int) -> Case:
    rows, n = shape["rows"], shape["N"]
    x = torch.randn(rows, n, device=device, dtype=DTYPE, requires_grad=True)
    inputs = (x,) + tuple(torch.randn(n, device=device, dtype=DTYPE, requires_grad=True) for _ in range(params))
    size = rows * n * x.element_size()
    return Case(DTYPE, inputs, {"fusednn": lambda: ours, "torch": lambda: theirs,
                                "torch_compile": lambda: compiled(theirs)},
                nbytes={mode: k * size for mode, k in MODE_PASSES.items()})


def _fused_layer_norm(x, w, b):
    return fusednn.ops.layer_norm(x, (x.shape[-1],), w, b)


def _torch_layer_norm(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b)


def _fused_rms_norm(x, w):
    return fusednn.ops.rms_norm(x, (x.shape[-1],), w)


def _torch_rms_norm(x, w):
    return F.rms_norm(x, (x.shape[-1],), w)


@register("layer_norm")
def layer_norm(shape: dict, device: torch.device) -> Case:
    return _norm_case(shape, device, _fused_layer_norm, _torch_layer_norm, params=2)


@register("rms_norm")
def rms_norm(shape: dict, device: torch.device) -> Case:
    return _norm_case(shape, device, _fused_rms_norm, _torch_rms_norm, params=1)
