"""Batch norm benchmark: training-mode ``act(batch_norm(x) + residual)`` with relu, the
ResNet-50 block tail, fusednn's fused Triton kernels against PyTorch eager (F.batch_norm,
then the add, then relu: cuDNN's or ATen's batch norm and two elementwise kernels) and
``torch.compile`` of the same (``dynamic=False``). GPU: bfloat16 channels_last
``[N, C, H, W]``, in bytes/s and % of the device's measured copy bandwidth. CPU: tiny
float32 shapes, where fusednn runs its plain-PyTorch reference (Triton needs a GPU there),
so the CPU rows measure the reference, not the kernels. Shapes from the registry
(``fusednn.cases.batch_norm``).

Bytes a two-pass training batch norm must move, in units of one [N, C, H, W] tensor: the
statistics need x read once before anything can be normalised, so fwd reads x twice and
the residual once and writes y (3, 4 with the residual); bwd reads x and dy for the sums,
then x and dy again and writes dx (5); with the residual it also reads it for relu's mask,
writes its gradient and reads that instead of dy and the residual in the second pass (7).
The [C] parameters and statistics are negligible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fusednn

from .runner import Case, compiled, register

DTYPE = torch.bfloat16


def _fused(x, running_mean, running_var, weight, bias, residual=None):
    return fusednn.ops.batch_norm(x, running_mean, running_var, weight, bias, True, 0.1, 1e-5, residual=residual,
                                  activation="relu")


def _eager(x, running_mean, running_var, weight, bias, residual=None):
    y = F.batch_norm(x, running_mean, running_var, weight, bias, True, 0.1, 1e-5)
    if residual is not None:
        y = y + residual
    return F.relu(y)


def _with_own_running_statistics(fn, channels: int, device: torch.device):
    """A provider: ``fn`` with running statistics of its own (float32, as a module keeps
    them). The training forward updates them in place, and torch's backward checks that
    the ones its graph saved were not changed since: shared buffers would break the
    graphs the other providers hold."""

    def build():
        running = (torch.zeros(channels, device=device), torch.ones(channels, device=device))
        return lambda x, weight, bias, *residual: fn(x, *running, weight, bias, *residual)

    return build


@register("batch_norm")
def batch_norm(shape: dict, device: torch.device) -> Case:
    n, c, h, w = shape["N"], shape["C"], shape["H"], shape["W"]
    dtype = DTYPE if device.type == "cuda" else torch.float32

    def tensor():
        return torch.randn(n, c, h, w, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)

    x = tensor().requires_grad_()
    weight = torch.ones(c, device=device, dtype=dtype, requires_grad=True)
    bias = torch.zeros(c, device=device, dtype=dtype, requires_grad=True)
    inputs = (x, weight, bias) + ((tensor().requires_grad_(),) if shape["residual"] else ())
    size = x.numel() * x.element_size()
    fwd, bwd = (4, 7) if shape["residual"] else (3, 5)
    providers = {"fusednn": _with_own_running_statistics(_fused, c, device),
                 "torch": _with_own_running_statistics(_eager, c, device),
                 "torch_compile": _with_own_running_statistics(compiled(_eager), c, device)}
    return Case(dtype, inputs, providers,
                nbytes={"fwd": fwd * size, "bwd": bwd * size, "fwd+bwd": (fwd + bwd) * size})
